"""Pre-flight: is there anything to learn? The teacher's lead over the base on judged queries.

The student can at best learn what its teacher knows beyond it. Where judged queries exist, this
measures that before anything is distilled: the base model's own top-``label.rerank_depth`` for
each judged query, reranked by the configured teacher, against the base order (same candidates,
so the lead is the teacher's ordering alone), with a paired bootstrap interval over queries.

Unless the interval's lower end lies above ``distill.min_teacher_lead`` (default 0) the teacher
is not measurably better than the base on this corpus's judged queries, and distilling it can
only copy its mistakes; :func:`check` then says so and the run stops before training (nothing is
trained or registered).
Silver runs (no judged queries) have no lead to measure: :func:`check` returns ``None``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kadet.core.config import KadetConfig
from kadet.kit.data import Dataset, eval_kind, load_beir
from kadet.kit.search import ranked
from kadet.stages.evaluate import drop_identical_ids, paired_bootstrap, per_query_metrics, retrieve
from kadet.core.io import write_json
from kadet.core.manifest import Manifest
from kadet.stages.label.teachers import build_teacher

log = logging.getLogger(__name__)


def base_top_k(cfg: KadetConfig, ds: Dataset, queries: dict[str, str], depth: int) -> list[list[str]]:
    """The base model's dense top-``depth`` for each query, in the order of ``queries``: the
    candidates every teacher reranks (here and in ``kadet teacher-report``, kadet/tools/teacher_report.py)."""
    base = retrieve(cfg, ds, queries, retriever="dense")
    if cfg.evaluation.ignore_identical_ids:
        base = drop_identical_ids(base)
    return [ranked(base.get(q, {}))[:depth] for q in queries]


def base_order(lists: list[list[str]]) -> list[list[float]]:
    """Scores that keep each list in its (the base's) order."""
    return [[-float(i) for i in range(len(lst))] for lst in lists]


def per_query_ndcg(cfg: KadetConfig, qrels, qids, lists, scores) -> dict[str, float]:
    """nDCG@k of each query's list ordered by ``scores``."""
    run = {q: {d: float(s) for d, s in zip(lst, sc)} for q, lst, sc in zip(qids, lists, scores)}
    if cfg.evaluation.ignore_identical_ids:
        run = drop_identical_ids(run)
    return {q: m[cfg.evaluation.ndcg]
            for q, m in per_query_metrics(qrels, run, cfg.evaluation.ndcg_k, cfg.evaluation.recall_k).items()}


def teacher_lead(cfg: KadetConfig, ds: Dataset | None = None) -> dict:
    """The teacher's lead over the base on the judged queries of ``cfg.data`` (or ``ds``):
    ``{"base", "teacher", "lead", "ci_low", "ci_high", "queries", "depth", "teacher_name", "seconds"}``."""
    t0 = time.perf_counter()
    ds = ds or load_beir(cfg.data.data_dir, cfg.data.split, cfg.data.qrels or None)
    eval_q = ds.eval_queries()
    qids = list(eval_q)
    qrels = {q: ds.qrels[q] for q in qids}
    depth = cfg.label.rerank_depth
    lists = base_top_k(cfg, ds, {q: eval_q[q].text for q in qids}, depth)
    base_pq = per_query_ndcg(cfg, qrels, qids, lists, base_order(lists))
    teacher = build_teacher(cfg.label.teacher, cfg, ds.corpus)
    teacher_pq = per_query_ndcg(cfg, qrels, qids, lists, teacher.score([eval_q[q].text for q in qids], lists))
    boot = paired_bootstrap(base_pq, teacher_pq, seed=cfg.seed)
    n = max(len(base_pq), 1)
    return {"base": sum(base_pq.values()) / n, "teacher": sum(teacher_pq.values()) / n, "lead": boot["mean"],
            "ci_low": boot["ci_low"], "ci_high": boot["ci_high"], "queries": boot["queries"], "depth": depth,
            "teacher_name": getattr(teacher, "name", cfg.label.teacher), "metric": cfg.evaluation.ndcg,
            "seconds": round(time.perf_counter() - t0, 1)}


def verdict(cfg: KadetConfig, lead: dict) -> tuple[bool, str]:
    """``(go, sentence)``: go when the lead's interval lies above ``distill.min_teacher_lead``."""
    from kadet.kit.comparison import display

    floor = cfg.distill.min_teacher_lead
    metric = display(lead["metric"])
    facts = (f"the teacher ({lead['teacher_name']}) reranking the base top-{lead['depth']} scores {metric} "
             f"{lead['teacher']:.4f} vs the base's {lead['base']:.4f} on {lead['queries']} judged queries: lead "
             f"{lead['lead']:+.4f}, 95% interval [{lead['ci_low']:+.4f}, {lead['ci_high']:+.4f}]")
    if not lead["ci_low"] > floor:
        return False, (f"nothing to learn: {facts}, not above distill.min_teacher_lead = {floor:+.4f}. "
                       "Distilling this teacher can only copy its mistakes into the model, so no model is trained "
                       "or registered. Use a stronger teacher (label.teacher, label.ensemble), or set "
                       "distill.preflight=false to train anyway.")
    return True, f"pre-flight: {facts}: distilling"


def check(cfg: KadetConfig, output_dir: str | Path | None = None, ds: Dataset | None = None) -> dict | None:
    """Measure the lead when judged queries exist (``None`` on silver runs or when the check is
    off). With ``output_dir``, writes ``preflight.json`` (when measured) and ``manifest.json``
    (always). The caller stops when ``go`` is false."""
    result = None
    if cfg.distill.preflight and (ds is not None or eval_kind(cfg.data.data_dir, cfg.data.split, cfg.data.qrels,
                                                             cfg.evaluation.kind) != "silver"):
        ds = ds or load_beir(cfg.data.data_dir, cfg.data.split, cfg.data.qrels or None)
        lead = teacher_lead(cfg, ds)
        go, sentence = verdict(cfg, lead)
        result = {**lead, "go": go, "message": sentence, "min_teacher_lead": cfg.distill.min_teacher_lead}
        log.info(sentence)
    if output_dir is not None:
        out = Path(output_dir)
        m = Manifest(stage="preflight", config_hash=cfg.hash())
        if result is None:
            m.extra = {"measured": False, "why": "distill.preflight is off" if not cfg.distill.preflight
                       else "no judged queries (silver run)"}
        else:
            write_json(out / "preflight.json", result)
            m.counts = {"judged_queries": result["queries"]}
            m.outputs = {"preflight": "preflight.json"}
            m.extra = {"measured": True, **{k: result[k] for k in ("base", "teacher", "lead", "ci_low", "ci_high",
                                                                   "depth", "teacher_name", "go")}}
        m.write(out)
    return result


def kept_text(pre: dict, gain: float) -> str:
    """What there was to learn and how much of it the candidate kept: the pre-flight lead (the
    teacher reranking the base's dense top-k on the judged queries) against the dense gain."""
    if "lead" not in pre:
        return "teacher lead: not measured (no judged queries, or distill.preflight off)"
    kept = f"; the candidate (dense) kept {gain / pre['lead']:.0%} of it" if pre["lead"] > 0 else ""
    return (f"teacher lead over the base (reranking its top-k, judged queries): {pre['lead']:+.4f} "
            f"[{pre['lead_ci_low']:+.4f}, {pre['lead_ci_high']:+.4f}]{kept}")
