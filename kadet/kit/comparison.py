"""What an evaluation of base vs candidate holds and can claim, in the words every output uses.

:class:`Comparison` is ``comparison.json`` (written by :func:`kadet.stages.evaluate.compare`, read by the
register step, ``report.html`` and the model card), its defaults in one place. The console
(``kadet run``), ``report.html``, the model card and the registry gate all describe a comparison
as *gold* (judged queries) or *silver* (held-out synthetic queries judged by the teacher), name
its metrics and state the paired bootstrap interval of the gain; the words live here so they say
the same thing everywhere.

    comp = Comparison.from_json(json.loads(path.read_text()))
    comp.gain("ndcg@10")              # {"mean": .., "ci_low": .., "ci_high": .., "p_ahead": .., ...}
    gain_text(comp.gain("ndcg@10"), "ndcg@10")
    # "nDCG@10 gain +0.0140; 95% paired bootstrap interval over 300 queries [+0.0005, +0.0277]; ..."
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: The order of ``comparison.json``'s keys (as :func:`kadet.stages.evaluate.compare` has always written them).
JSON_KEYS = ("eval_data", "data_dir", "retriever", "split", "queries", "models", "kind", "silver_dir", "base",
             "candidate", "delta", "retrievers", "by_type", "seconds")


@dataclass
class Comparison:
    """Base model and candidate measured in one evaluation run on the same test data."""

    #: Figures of the retriever the gate judges: ``{"ndcg@10": .., "recall@100": .., "mrr@10": ..}``.
    base: dict[str, float]
    candidate: dict[str, float]
    #: Digest of the corpus, queries and qrels measured on (``+hybrid`` for a hybrid gate): the
    #: registry compares figures only between versions with the same one.
    eval_data: str = ""
    #: ``{"base": model, "candidate": model folder}``
    models: dict[str, str] = field(default_factory=dict)
    #: ``gold`` (judged queries) or ``silver`` (held-out synthetic queries judged by the teacher).
    kind: str = "gold"
    #: What the gate judged: ``dense`` or ``hybrid`` (``evaluation.retriever``).
    retriever: str = "dense"
    queries: int | None = None
    data_dir: str = ""
    split: str = "test"
    #: Silver only: the held-out set's BEIR folder, relative to the evaluate step's output folder
    #: (the register step re-evaluates a champion on it).
    silver_dir: str = ""
    #: ``{metric: paired bootstrap of candidate - base}`` (:func:`kadet.stages.evaluate.paired_bootstrap`).
    delta: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Every retriever: ``{"dense": {"base": .., "candidate": .., "delta": ..}, "hybrid": .., "bm25": {..}}``.
    retrievers: dict[str, Any] = field(default_factory=dict)
    #: nDCG per query type ``{type: {"queries": n, "base": .., "candidate": ..}}``; None: no typed queries.
    by_type: dict[str, dict[str, float]] | None = None
    seconds: float | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Comparison:
        """From ``comparison.json``'s object; a key it lacks takes the default above."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_json(self) -> dict[str, Any]:
        """``comparison.json``'s object: :data:`JSON_KEYS` in order, ``silver_dir`` only for
        silver and ``by_type`` only where queries had types."""
        return {k: getattr(self, k) for k in JSON_KEYS
                if not (k == "silver_dir" and not self.silver_dir) and not (k == "by_type" and self.by_type is None)}

    def gain(self, metric: str) -> dict[str, float] | None:
        """The paired bootstrap of the candidate's gain in ``metric`` over the base model, if measured."""
        return self.delta.get(metric)


def display(name: str) -> str:
    """A metric as people read it: "ndcg@10" -> "nDCG@10", "recall@100" -> "Recall@100"."""
    kind, _, k = name.partition("@")
    return {"ndcg": "nDCG", "recall": "Recall", "mrr": "MRR"}.get(kind, kind) + "@" + k


def metric_name(name: str) -> str:
    """An MLflow-legal name for a kadet metric: ``ndcg@10`` -> ``ndcg_at_10``."""
    return name.replace("@", "_at_")


def gain_text(gain: Mapping[str, float], metric: str = "") -> str:
    """The gain and its paired bootstrap interval, as every output says it:
    "nDCG@10 gain +0.0140; 95% paired bootstrap interval over 300 queries [+0.0005, +0.0277]; the
    candidate is ahead in 98% of resamples". ``gain``: :func:`kadet.stages.evaluate.paired_bootstrap`'s
    result; what it lacks (``confidence``, ``queries``, ``p_ahead``: the run summary has only the
    bounds) is left out, as is the metric when ``metric`` is ""."""
    level = f"{round(100 * gain['confidence'])}% " if "confidence" in gain else ""
    over = f" over {gain['queries']} queries" if "queries" in gain else ""
    ahead = f"; the candidate is ahead in {100 * gain['p_ahead']:.0f}% of resamples" if "p_ahead" in gain else ""
    return (f"{display(metric) + ' ' if metric else ''}gain {gain['mean']:+.4f}; {level}paired bootstrap interval"
            f"{over} [{gain['ci_low']:+.4f}, {gain['ci_high']:+.4f}]{ahead}")

#: What each kind of evaluation was measured on.
KIND_TEXT = {"gold": "judged queries",
             "silver": "held-out synthetic queries judged by the teacher"}

#: The one sentence every silver result leads with: what silver can and cannot say, and what to do.
SILVER_CAVEAT = ("Silver (no judged queries): these figures say how closely the model follows its teacher on "
                 "synthetic queries, not whether it retrieves better for real queries; "
                 "judge 30-50 real queries with `kadet judge` for an answer you can trust.")

#: The gate's reason for not promoting on silver (``register.silver_promotes`` false, the default).
SILVER_REFUSAL = ("silver evaluation cannot promote: held-out synthetic queries judged by the teacher the model "
                  "learned from measure agreement with that teacher, not retrieval on real queries "
                  "(benchmarks/studies/gate.py: silver promoted models that judged queries show are worse). "
                  "Judge 30-50 real queries with `kadet judge` to make the gate gold, "
                  "or set register.silver_promotes: true to accept silver")


def kind_text(kind: str) -> str:
    """"judged queries" / "held-out synthetic queries judged by the teacher"."""
    return KIND_TEXT.get(kind, kind)


#: How each retriever of a comparison is named in tables (``{}``: base or candidate).
RETRIEVER_LABELS = {"dense": "{} alone (dense)", "hybrid": "{} + BM25 (hybrid, RRF)"}


def retriever_rows(rets: dict, columns: list[str]) -> list[list[str]]:
    """Table rows of a comparison's ``retrievers`` (``{"dense": {"base": {col: v}, "candidate": ..},
    "hybrid": .., "bm25": {col: v}}``): the model alone and in hybrid, base and candidate, then BM25."""
    rows = [[label.format(who), *(f"{rets[r][who].get(c, float('nan')):.4f}" for c in columns)]
            for r, label in RETRIEVER_LABELS.items() if r in rets for who in ("base", "candidate")]
    if "bm25" in rets:
        rows.append(["BM25 alone", *(f"{rets['bm25'].get(c, float('nan')):.4f}" for c in columns)])
    return rows
