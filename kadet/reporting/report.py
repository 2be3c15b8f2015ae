"""``report.html``: one self-contained page (inline CSS, images as data URIs, no script, opens
offline) about one pipeline run, written by the register step.

Under the title (the silver caveat first, for a silver evaluation), the sections of
:data:`SECTIONS` in order, each an ``<h2 id=...>``: ``decision`` (the gate's outcome and reasons,
registry version, how to use it), ``lineage`` (corpus, parent version, work reused; where to find
the run), ``metrics`` (base vs candidate, every retriever, the paired bootstrap interval of the
gain), ``by-type`` (nDCG per query type, table and chart), ``teacher`` (label statistics: scores,
splits and types), ``training`` (loss and dev curves), ``drops`` (what each stage dropped and
why), ``samples`` (up to 5 generated queries per type), ``timings`` (wall time per stage).

Everything comes from the run's MLflow records (the stages' child runs: metrics, tags and the
artifacts they log), so the report is the same wherever the stages ran.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadet.core.io import read_json
from kadet.core.storage import mask_uri
from kadet.registry.tracking import DENSE_INDEX_TAG
from kadet.reporting import plots
from kadet.kit.comparison import SILVER_CAVEAT, Comparison, display, gain_text, kind_text, retriever_rows
from kadet.core.config import KadetConfig
from kadet.registry.register import lineage_lines, usage

log = logging.getLogger(__name__)

SAMPLES_PER_TYPE = 5

CSS = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f4f4f4}.pass{color:#17692e}.fail{color:#a11}.muted{color:#666}img{max-width:100%}
code{background:#f4f4f4;padding:0 .2em}"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def collect(cfg: KadetConfig, pipeline_run: str) -> dict:
    """The run's stages from MLflow: name, seconds, metrics, tags and the JSON artifacts the report uses."""
    from mlflow.artifacts import download_artifacts

    from kadet.registry import tracking

    c = tracking.client(cfg)
    parent = tracking.parent_run_id(cfg, pipeline_run)
    runs = c.search_runs([tracking.experiment_id(cfg)], filter_string=tracking.filter_equals("tags.`mlflow.parentRunId`", parent),
                         order_by=["attributes.start_time ASC"], max_results=500)
    stages, files = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in runs:
            end = r.info.end_time or r.info.start_time
            stages.append({"name": r.info.run_name, "seconds": (end - r.info.start_time) / 1000.0,
                           "status": r.info.status, "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)})
            for name in ("label_statistics.json", "queries_sample.json", "curves.json"):
                if name in files:
                    continue
                try:
                    local = download_artifacts(run_id=r.info.run_id, artifact_path=name, dst_path=tmp,
                                               tracking_uri=tracking.tracking_uri(cfg))
                    files[name] = read_json(local)
                except Exception:  # this stage did not log it
                    pass
    return {"parent_run": parent, "pipeline_run": pipeline_run, "stages": stages, "files": files}


#: Per stage, the counts of work taken from the store (kadet/core/reuse.py) and done in this run.
REUSE_COUNTS = {"generate": ("reused", "generated"), "label": ("pairs_reused", "pairs_scored")}


def stage_counts(stages, stage: str, keys: tuple[str, str]) -> dict[str, int]:
    """``{reused key: n, new key: n}`` summed over the stage's runs (its shards, not its merge)."""
    ms = [s["metrics"] for s in stages if re.fullmatch(rf"{stage}(-\d+-of-\d+)?", s["name"])]
    return {k: int(sum(m.get(f"count.{k}", 0) for m in ms)) for k in keys}


def work_section(run: Mapping[str, Any], lin: Mapping[str, Any]) -> list[str]:
    """Lineage (corpus, parent version, changes) and, per stage, work reused vs done now."""
    rows = []
    for stage, keys in REUSE_COUNTS.items():
        r, n = stage_counts(run.get("stages", []), stage, keys).values()
        if r or n:
            rows.append([stage, r, n, f"{100 * r / (r + n):.0f}%"])
    parts = ['<h2 id="lineage">Lineage and reuse</h2>']
    parts += [f"<p>{_e(line)}</p>" for line in lineage_lines(lin)] or ["<p class=muted>No lineage recorded.</p>"]
    index = next((s["tags"].get(DENSE_INDEX_TAG) for s in run.get("stages", []) if s["name"] == "mine"), None)
    if index and ("IVF" in index):           # an approximate index was weighed: say which searched, how well
        parts.append(f"<p>Mining's dense search: {_e(index)}.</p>")
    if rows:
        parts.append(table(["stage", "reused from earlier runs", "done in this run", "reused"], rows))
    return parts


@dataclass
class Page:
    """What the page is made of: :func:`render`'s arguments, handed to each section."""

    run: Mapping[str, Any]
    comparison: Comparison
    gate: Mapping[str, Any]
    cfg: KadetConfig
    images: Mapping[str, Path]


def render(run: Mapping[str, Any], comparison: Comparison, gate: Mapping[str, Any],
           cfg: KadetConfig, images: Mapping[str, Path]) -> str:
    """The page. ``run``: :func:`collect`'s; ``gate``: ``promote``, ``reason``, ``version``,
    ``model_name``, ``incumbent``, ``incumbent_metrics``, ``lineage``, ``tracking_uri``, ``links``
    (name: URI, e.g. the MLflow run and model version); ``images``: PNG files to embed by section
    (``by-type``, ``training``)."""
    page = Page(run, comparison, gate, cfg, images)
    parts = [*title(page), *(part for section in SECTIONS.values() for part in section(page))]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>kadet run report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def title(p: Page) -> list[str]:
    """The run's key, the silver caveat (silver only), the parent run and the kind of evaluation."""
    kind, queries = p.comparison.kind, p.comparison.queries
    return [f"<h1>kadet run <code>{_e(p.run.get('pipeline_run', ''))}</code></h1>",
            *([f'<p class=fail id="silver"><b>{_e(SILVER_CAVEAT)}</b></p>'] if kind == "silver" else []),
            f"<p class=muted>MLflow parent run <code>{_e(p.run.get('parent_run', ''))}</code>; evaluation: "
            f"<b>{_e(kind)}</b> ({_e(kind_text(kind))}), {_e('?' if queries is None else queries)} queries.</p>"]


def decision_section(p: Page) -> list[str]:
    """The gate's outcome and reasons, the registered version and how to use it."""
    gate, ok = p.gate, p.gate.get("promote")
    parts = ['<h2 id="decision">Decision</h2>',
             f"<p class={'pass' if ok else 'fail'}><b>{'promoted' if ok else 'not promoted'}</b>: "
             f"{_e(gate.get('reason', ''))}</p>",
             f"<p>Registered as <code>{_e(gate.get('model_name', ''))}</code> version "
             f"<b>{_e(gate.get('version', '?'))}</b>; compared with {_e(gate.get('incumbent', '?'))}.</p>"]
    if gate.get("version") and gate.get("model_name"):
        parts.append('<p id="use">Use it:</p><ul>' + "".join(f"<li><code>{_e(line)}</code></li>"
                                                              for line in usage(gate["model_name"], gate["version"],
                                                                                gate.get("tracking_uri", "")))
                     + "</ul>")
    return parts


def lineage_section(p: Page) -> list[str]:
    """:func:`work_section`, then where to find the run and the version (``gate["links"]``)."""
    parts = work_section(p.run, p.gate.get("lineage") or {})
    links = {k: mask_uri(v) for k, v in (p.gate.get("links") or {}).items()}
    if links:
        parts.append("<p>" + " · ".join(
            f'{_e(k)}: <a href="{_e(v)}">{_e(v)}</a>' if str(v).startswith("http") else f"{_e(k)}: <code>{_e(v)}</code>"
            for k, v in links.items()) + "</p>")
    return parts


def metrics_section(p: Page) -> list[str]:
    """Base, champion (if it was the incumbent) and candidate; every retriever; the gain's interval."""
    e, comp, gate = p.cfg.evaluation, p.comparison, p.gate
    names = [n for n in (e.ndcg, e.recall, e.mrr) if n in comp.candidate]
    rows = [[who, *(f"{figures[n]:.4f}" for n in names)] for who, figures in (("base", comp.base),
                                                                              ("candidate", comp.candidate))]
    incumbent = gate.get("incumbent_metrics") or {}
    if incumbent and not str(gate.get("incumbent", "")).startswith("base"):
        rows.insert(1, [gate.get("incumbent", "champion"), *(f"{incumbent[n]:.4f}" if n in incumbent else "-"
                                                            for n in names)])
    rows.append(["gain", *(f"{comp.candidate[n] - comp.base[n]:+.4f}" for n in names)])
    parts = ['<h2 id="metrics">Metrics</h2>', f"<p class=muted>The gate judged the {_e(comp.retriever)} retriever.</p>",
             table(["model", *map(display, names)], rows)]
    if comp.retrievers:
        parts += ["<p>Every retriever, same queries: the adapted model as your stack may serve it.</p>",
                  table(["retriever", *map(display, names)], retriever_rows(comp.retrievers, names))]
    gain = comp.gain(e.ndcg)
    if gain:
        parts.append(f"<p>{gain_text(gain, e.ndcg)}.</p>")
    return parts


def by_type_section(p: Page) -> list[str]:
    """nDCG per query type of base and candidate: table and chart."""
    ndcg, by_type = p.cfg.evaluation.ndcg, p.comparison.by_type or {}
    parts = ['<h2 id="by-type">nDCG by query type</h2>']
    if not by_type:
        return [*parts, "<p class=muted>No typed queries to break the metric down by.</p>"]
    src = "held-out silver queries" if p.comparison.kind == "silver" else "synthetic dev queries"
    parts += [f"<p class=muted>{display(ndcg)} on the {src}, by type.</p>",
              table(["type", "queries", "base", "candidate"],
                    [[t, r["queries"], f"{r['base']:.4f}", f"{r['candidate']:.4f}"] for t, r in by_type.items()])]
    if p.images.get("by-type"):
        parts.append(image(p.images["by-type"], f"{display(ndcg)} by query type"))
    return parts


def preflight_text(p: Page) -> str:
    """The pre-flight check's lead (kadet/stages/preflight.py) and the share of it the candidate kept."""
    from kadet.stages.preflight import kept_text

    metrics = next((s["metrics"] for s in p.run.get("stages", []) if s["name"] == "preflight"), {})
    pre = {k.removeprefix("preflight."): v for k, v in metrics.items() if k.startswith("preflight.")}
    dense = p.comparison.retrievers.get("dense") or {}
    nd = p.cfg.evaluation.ndcg
    gain = dense["candidate"][nd] - dense["base"][nd] if dense.get("base") and dense.get("candidate") else 0.0
    return kept_text(pre, gain)


def teacher_section(p: Page) -> list[str]:
    """The pre-flight lead; the label statistics: queries, list length, score percentiles, splits and types."""
    stats = p.run.get("files", {}).get("label_statistics.json") or {}
    lead = f"<p>{_e(preflight_text(p))}.</p>"
    if not stats:
        return ['<h2 id="teacher">Teacher</h2>', lead, "<p class=muted>No label statistics recorded.</p>"]
    pct = stats.get("score_percentiles", {})
    return ['<h2 id="teacher">Teacher</h2>', lead,
            f"<p>Teacher <code>{_e(p.cfg.label.teacher)}</code>: {stats.get('queries', 0)} labelled queries, "
            f"{stats.get('list_length_mean', 0):.1f} passages per list on average.</p>",
            table(["score percentile", *pct.keys()], [["normalised score", *(f"{v:.3f}" for v in pct.values())]]),
            table(["split/type", "queries"], [[k, v] for k, v in stats.get("by_split_and_type", {}).items()])]


def training_section(p: Page) -> list[str]:
    """Train and dev loss per epoch: table and chart."""
    curves = p.run.get("files", {}).get("curves.json") or {}
    if not curves.get("epoch"):
        return ['<h2 id="training">Training</h2>', "<p class=muted>No training curves recorded.</p>"]
    parts = ['<h2 id="training">Training</h2>',
             table(["epoch", "train loss", "dev loss"],
                   [[ep, f"{tr:.4f}", "n/a" if dv is None else f"{dv:.4f}"] for ep, tr, dv in
                    zip(curves["epoch"], curves.get("epoch_train_loss", []), curves.get("dev_loss", []))])]
    if p.images.get("training"):
        parts.append(image(p.images["training"], "loss and dev curves"))
    return parts


def drops_section(p: Page) -> list[str]:
    """What each stage dropped, by reason (the ``dropped.*`` metrics of its run)."""
    drops = [[s["name"], k.removeprefix("dropped."), int(v)] for s in p.run.get("stages", [])
             for k, v in sorted(s["metrics"].items()) if k.startswith("dropped.") and v]
    return ['<h2 id="drops">Dropped, by stage and reason</h2>',
            table(["stage", "reason", "count"], drops) if drops else "<p class=muted>Nothing dropped.</p>"]


def samples_section(p: Page) -> list[str]:
    """Up to :data:`SAMPLES_PER_TYPE` generated queries of each type."""
    sample = p.run.get("files", {}).get("queries_sample.json") or {}
    cols = sample.get("columns", [])
    per_type: dict[str, list[list[Any]]] = {}
    for row in sample.get("data", []):
        r = dict(zip(cols, row))
        if len(per_type.setdefault(r.get("type", "?"), [])) < SAMPLES_PER_TYPE:
            per_type[r.get("type", "?")].append([r.get("type", "?"), r.get("text", ""), r.get("source_doc_id", "")])
    return ['<h2 id="samples">Sample queries</h2>',
            table(["type", "query", "source passage"], [x for rows in per_type.values() for x in rows])
            if per_type else "<p class=muted>No sample recorded.</p>"]


def timings_section(p: Page) -> list[str]:
    """Wall time and status of each stage run (this one is still running: it writes the page)."""
    return ['<h2 id="timings">Timings</h2>',
            table(["stage", "seconds", "status"], [[s["name"], f"{s['seconds']:.1f}" if s["status"] != "RUNNING" else "",
                                                    s["status"] if s["status"] != "RUNNING" else "writing this report"]
                                                   for s in p.run.get("stages", [])])]


#: The page's sections in order, by their ``<h2>`` id.
SECTIONS: dict[str, Callable[[Page], list[str]]] = {
    "decision": decision_section, "lineage": lineage_section, "metrics": metrics_section, "by-type": by_type_section,
    "teacher": teacher_section, "training": training_section, "drops": drops_section, "samples": samples_section,
    "timings": timings_section,
}


def write_report_or_reason(cfg: KadetConfig, pipeline_run: str, comparison: Comparison,
                           gate: Mapping[str, Any], path: str | Path) -> Path:
    """:func:`write_report`, or, if that fails, a page at ``path`` that says why and gives the gate's
    reason: a report never costs the registration it reports on."""
    try:
        return write_report(cfg, pipeline_run, comparison, gate, path)
    except Exception as exc:
        from kadet.registry.tracking import one_line

        log.warning("report.html not written: %s", one_line(exc))
        path = Path(path)
        path.write_text(f"<!doctype html><title>kadet run report</title><p>The report could not be written: "
                        f"{_e(one_line(exc))}</p><p>{_e(gate.get('reason', ''))}</p>", encoding="utf-8")
        return path


def write_report(cfg: KadetConfig, pipeline_run: str, comparison: Comparison, gate: Mapping[str, Any],
                 path: str | Path) -> Path:
    """Collect the run from MLflow, draw the charts, write ``path``."""
    run = collect(cfg, pipeline_run)
    with tempfile.TemporaryDirectory() as tmp:
        images = {}
        if comparison.by_type:
            images["by-type"] = plots.plot_by_type(plots.by_type_bars(comparison.by_type), Path(tmp) / "by_type.png",
                                                   cfg.evaluation.ndcg)
        if (run["files"].get("curves.json") or {}).get("epoch"):
            images["training"] = plots.plot_curves(run["files"]["curves.json"], Path(tmp) / "curves.png")
        text = render(run, comparison, gate, cfg, images)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
