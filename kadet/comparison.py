"""What an evaluation of base vs candidate can claim, in the words every output uses.

The console (``kadet run``), ``report.html``, the model card and the registry gate all describe
a comparison as *gold* (judged queries) or *silver* (held-out synthetic queries judged by the
teacher); the sentences live here so they say the same thing everywhere.
"""

from __future__ import annotations

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
                  "(benchmarks/gate.py: silver promoted models that judged queries show are worse). "
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
