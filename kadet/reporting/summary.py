"""The run's decision in a few lines of Markdown, for the KFP run page (a ``Markdown`` output of
the last task of every branch): what was decided, on which figures, and where to read more.

    nothing new         no_change(...)           "## No change since v3"
    nothing to learn    nothing_to_learn(...)    "## Nothing to learn: lead +0.0000 [-0.0100, +0.0120]"
    trained             gate_decision(...)       "## Gate passed: v4" / "## Gate failed: v4 kept as challenger"
                        outcome(...)             the gate's text with what the alias step did

Links come from :func:`kadet.registry.tracking.links` (the MLflow UI at ``tracking.ui_url``).
"""

from __future__ import annotations

from collections.abc import Mapping

from kadet.kit.comparison import Comparison, display, gain_text


def _links(links: Mapping[str, str]) -> list[str]:
    """One bullet per link: a Markdown link for an address a browser opens, else the URI as code."""
    return [f"- {k}: [{v}]({v})" if str(v).startswith(("http://", "https://")) else f"- {k}: `{v}`"
            for k, v in links.items()]


def no_change(model_name: str, version: str, text: str, links: Mapping[str, str]) -> str:
    """Nothing new: the corpus and settings are those ``model_name`` v``version`` was trained on."""
    return "\n".join([f"## No change since v{version}", "", text, "",
                      f"Nothing was trained; `{model_name}` v{version} stays as it is.", "", *_links(links), ""])


def nothing_to_learn(reason: str, pre: Mapping[str, float], links: Mapping[str, str]) -> str:
    """The pre-flight check stopped the run: the teacher is not measurably ahead of the base.
    ``pre``: ``preflight.json`` (``lead``, ``ci_low``, ``ci_high``, ``base``, ``teacher``, ``queries``)."""
    title = "## Nothing to learn"
    rows = []
    if "lead" in pre:
        title += f": lead {pre['lead']:+.4f} [{pre['ci_low']:+.4f}, {pre['ci_high']:+.4f}]"
        metric = display(str(pre.get("metric", "ndcg@10")))
        rows = [f"| | {metric} |", "|---|---|", f"| base | {pre['base']:.4f} |", f"| teacher | {pre['teacher']:.4f} |",
                f"| lead (95% interval) | {pre['lead']:+.4f} [{pre['ci_low']:+.4f}, {pre['ci_high']:+.4f}] |",
                f"| judged queries | {pre.get('queries', '?')} |", ""]
    return "\n".join([title, "", *rows, reason, "", "Nothing was trained or registered.", "", *_links(links), ""])


def gate_rows(comparison: Comparison, gate: Mapping, metrics: tuple[str, str]) -> list[str]:
    """A table: candidate, incumbent and their difference in the two gate metrics."""
    inc = gate.get("incumbent_metrics") or {}
    who = str(gate.get("incumbent") or "incumbent")
    head = ["| | " + " | ".join(display(m) for m in metrics) + " |", "|---|" + "---|" * len(metrics)]
    cand = "| candidate | " + " | ".join(f"{comparison.candidate.get(m, float('nan')):.4f}" for m in metrics) + " |"
    if not inc:
        return [*head, cand, ""]
    rows = [f"| {who} | " + " | ".join(f"{inc.get(m, float('nan')):.4f}" for m in metrics) + " |",
            "| delta | " + " | ".join(f"{comparison.candidate.get(m, float('nan')) - inc.get(m, float('nan')):+.4f}"
                                     for m in metrics) + " |"]
    return [*head, cand, *rows, ""]


def gate_decision(comparison: Comparison, gate: Mapping, metrics: tuple[str, str], links: Mapping[str, str]) -> str:
    """The register step's decision: passed (to be promoted) or failed (kept as challenger), the
    figures it rests on, the reasons, the evaluation's kind and the links."""
    version, name = gate.get("version", "?"), gate.get("model_name", "")
    title = f"## Gate passed: v{version}" if gate.get("promote") else f"## Gate failed: v{version} kept as challenger"
    gain = comparison.gain(metrics[0])
    lines = [title, "", f"`{name}` v{version} against {gate.get('incumbent', 'none')}, on {comparison.kind} "
             f"evaluation ({comparison.queries if comparison.queries is not None else '?'} queries).", "",
             *gate_rows(comparison, gate, metrics)]
    if gain:
        lines += [f"{gain_text(gain, metrics[0])}.", ""]
    lines += [f"**Gate:** {gate.get('reason', '')}", "", *_links(gate.get("links") or {}), ""]
    return "\n".join(lines)


def outcome(gate_markdown: str, promoted: bool, version: str, detail: str = "") -> str:
    """The register step's Markdown with what the alias step did: promoted (champion), refused
    at the last moment (the champion moved meanwhile), or kept as challenger."""
    if promoted:
        line = f"**Outcome:** v{version} is the champion now."
    elif detail:
        line = f"**Outcome:** v{version} was not promoted: {detail}"
    else:
        line = f"**Outcome:** v{version} is the challenger; the champion stays."
    return gate_markdown.rstrip("\n") + "\n\n" + line + "\n"
