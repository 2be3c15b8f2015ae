"""How good is each teacher? Rerank the base model's top-k for human queries with qrels.

    kadet teacher-report --data ../shared/data/beir/scifact --split test \\
        --teacher dense --teacher bm25 --teacher ql --teacher ensemble

prints nDCG@10 of the base dense ranking, of each teacher or retriever alone, and of the
ensemble (``label.ensemble`` weights). ``--grid ql=0,0.5,1`` also scores every combination of
the listed member weights from the same member scores, to choose ensemble weights on a split
that is *not* the test split (SciFact: ``--split train``).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import numpy as np

from kadet.core.config import KadetConfig
from kadet.kit.data import Dataset, load_beir
from kadet.core.io import write_json
from kadet.stages.label.teachers import EnsembleTeacher, build_teacher
from kadet.stages.preflight import base_order, base_top_k, per_query_ndcg

log = logging.getLogger(__name__)


class Precomputed:
    """Member scores computed once, replayed to the ensemble."""

    def __init__(self, name: str, scores: list[np.ndarray]):
        self.name, self.scores = name, scores

    def score(self, queries, doc_lists):
        return self.scores


def _ndcg(qrels, qids, lists, scores, cfg: KadetConfig) -> float:
    pq = per_query_ndcg(cfg, qrels, qids, lists, scores)
    return sum(pq.values()) / len(pq) if pq else float("nan")


def teacher_report(cfg: KadetConfig, teachers: list[str], split: str = "test", depth: int = 20,
                   max_queries: int | None = None, grid: dict[str, list[float]] | None = None,
                   output: Path | None = None) -> dict:
    """Rerank the base top-``depth`` with each teacher; returns ``{"rows": [...], "grid": [...]}``."""
    ds = load_beir(cfg.data.data_dir, split)
    eval_q = ds.eval_queries()
    if max_queries:
        eval_q = dict(list(eval_q.items())[:max_queries])
    qids = list(eval_q)
    qrels = {q: ds.qrels[q] for q in qids}
    lists = base_top_k(cfg, ds, {q: eval_q[q].text for q in qids}, depth)
    queries = [eval_q[q].text for q in qids]
    rows = [{"system": f"base dense top-{depth} ({cfg.retrieval.model})",
             "ndcg": _ndcg(qrels, qids, lists, base_order(lists), cfg)}]
    members = sorted({t for t in teachers if t != "ensemble"} | ({k for k, w in cfg.label.ensemble.items() if w}
                                                                 if "ensemble" in teachers or grid else set())
                     | set(grid or {}))
    cache: dict = {}
    scores: dict[str, list[np.ndarray]] = {}
    for name in members:
        t0 = time.perf_counter()
        scores[name] = build_teacher(name, cfg, ds.corpus, cache).score(queries, lists)
        seconds = time.perf_counter() - t0
        if name in teachers:
            rows.append({"system": name, "ndcg": _ndcg(qrels, qids, lists, scores[name], cfg),
                         "seconds": round(seconds, 1)})
    if "ensemble" in teachers:
        ens = EnsembleTeacher({k: Precomputed(k, scores[k]) for k in scores}, cfg.label.ensemble)
        rows.append({"system": ens.name, "ndcg": _ndcg(qrels, qids, lists, ens.score(queries, lists), cfg)})
    grid_rows = []
    if grid:
        names = sorted(set(cfg.label.ensemble) | set(grid))
        choices = [grid.get(n, [cfg.label.ensemble.get(n, 0.0)]) for n in names]
        for combo in itertools.product(*choices):
            weights = dict(zip(names, combo))
            if not any(weights.values()):
                continue
            ens = EnsembleTeacher({k: Precomputed(k, scores[k]) for k in names if weights[k]}, weights)
            grid_rows.append({"weights": weights, "ndcg": _ndcg(qrels, qids, lists, ens.score(queries, lists), cfg)})
        grid_rows.sort(key=lambda r: -r["ndcg"])
    report = {"split": split, "queries": len(qids), "depth": depth, "metric": cfg.evaluation.ndcg, "rows": rows,
              "grid": grid_rows}
    if output:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / f"teacher-report-{split}.json", report)
    return report


def format_report(report: dict) -> str:
    from kadet.kit.comparison import display

    width = max(len(r["system"]) for r in report["rows"])
    lines = [f"{report['queries']} {report['split']} queries, reranking the base top-{report['depth']}",
             f"{'system':<{width}}  {display(report['metric']):>8}", "-" * (width + 10)]
    lines += [f"{r['system']:<{width}}  {r['ndcg']:>8.4f}" for r in report["rows"]]
    if report["grid"]:
        lines += ["", "ensemble weight grid (best first):"]
        lines += [f"  {json.dumps(g['weights'])}  {g['ndcg']:.4f}" for g in report["grid"][:10]]
    return "\n".join(lines)
