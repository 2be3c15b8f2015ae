"""Evaluation stage: nDCG@10, Recall@100 and MRR@10 with trec_eval semantics.

Metrics come from ``pytrec_eval`` (the trec_eval C code), never hand-written. MRR@k is
trec_eval's ``recip_rank`` on the run cut to its top k, as BEIR does.

    result = evaluate(cfg)            # reads cfg.data.data_dir, writes <output>/metrics.json
    result.metrics["ndcg@10"]         # 0.6451 for all-MiniLM-L6-v2 on SciFact
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kadet.kit.comparison import Comparison
from kadet.core.config import KadetConfig
from kadet.kit.data import Dataset, Qrels, eval_kind, load_beir
from kadet.core.errors import DataError, KadetError
from kadet.kit.encode import Encoder
from kadet.core.io import write_json
from kadet.core.manifest import Manifest
from kadet.kit.search import BM25Retriever, DenseRetriever, Run, reciprocal_rank_fusion, top_k
from kadet.core.layout import STAGES, file_in

log = logging.getLogger(__name__)

RETRIEVERS = ("dense", "bm25", "hybrid")


def per_query_metrics(qrels: Qrels, run: Run, ndcg_k: int = 10, recall_k: int = 100, mrr_k: int = 10) -> dict:
    """``{qid: {"ndcg@10": .., "recall@100": .., "mrr@10": ..}}`` for queries in both qrels and run.

    A judged query with no retrieved document scores 0 on every measure (trec_eval ``-c``).
    ``pytrec_eval`` is imported here, not with the module: the rest of this module (``retrieve``,
    ``drop_identical_ids``) runs where it is not installed (benchmarks/studies/device_check.py).
    """
    import pytrec_eval

    qrels = {q: rels for q, rels in qrels.items() if rels}
    full = {q: dict(run.get(q, {})) or {"__none__": 0.0} for q in qrels}
    cut = top_k(full, mrr_k)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{ndcg_k}", f"recall.{recall_k}"})
    ev_mrr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    a, b = ev.evaluate(full), ev_mrr.evaluate(cut)
    return {
        q: {
            f"ndcg@{ndcg_k}": a[q][f"ndcg_cut_{ndcg_k}"],
            f"recall@{recall_k}": a[q][f"recall_{recall_k}"],
            f"mrr@{mrr_k}": b[q]["recip_rank"],
        }
        for q in qrels
    }


def aggregate(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each measure over queries."""
    if not per_query:
        return {}
    names = next(iter(per_query.values())).keys()
    return {n: sum(m[n] for m in per_query.values()) / len(per_query) for n in names}


def drop_identical_ids(run: Run) -> Run:
    """Remove a retrieved document whose id equals the query id (BEIR's default)."""
    return {q: {d: s for d, s in scores.items() if d != q} for q, scores in run.items()}


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: Run = field(repr=False)
    seconds: float = 0.0


def retrieve(cfg: KadetConfig, ds: Dataset, queries: dict[str, str], retriever: str | None = None,
             model: str | None = None) -> Run:
    """Run the configured retriever (``dense``, ``bm25`` or ``hybrid``) over ``queries``."""
    r = cfg.retrieval
    kind = retriever or r.retriever
    if kind not in RETRIEVERS:
        raise ValueError(f"retriever must be one of {RETRIEVERS}, got {kind!r}")
    runs: list[Run] = []
    depth = max(r.top_k, r.rrf_depth) if kind == "hybrid" else r.top_k
    if kind in ("dense", "hybrid"):
        enc = Encoder.from_config(cfg, model)
        runs.append(DenseRetriever.from_config(enc, ds.corpus, cfg, index="exact").search(queries, depth))
    if kind in ("bm25", "hybrid"):
        bm25 = BM25Retriever.from_config(ds.corpus, cfg)
        runs.append(bm25.search(queries, depth))
    run = runs[0] if len(runs) == 1 else reciprocal_rank_fusion(runs, k=r.rrf_k, depth=r.rrf_depth)
    return top_k(run, r.top_k)


def scored_run(cfg: KadetConfig, ds: Dataset, queries: dict[str, str], qrels: Qrels, retriever: str | None = None,
               model: str | None = None) -> tuple[Run, dict[str, dict[str, float]]]:
    """Retrieve for ``queries`` and score the run against ``qrels``: ``(run, per-query metrics)``."""
    run = retrieve(cfg, ds, queries, retriever, model)
    if cfg.evaluation.ignore_identical_ids:
        run = drop_identical_ids(run)
    e = cfg.evaluation
    return run, per_query_metrics(qrels, run, e.ndcg_k, e.recall_k, e.mrr_k)


def evaluate(cfg: KadetConfig, output_dir: str | Path | None = None, model: str | None = None,
             retriever: str | None = None, max_queries: int | None = None, dataset: Dataset | None = None) -> EvalResult:
    """Evaluate a retriever on ``dataset`` (default: ``cfg.data.data_dir``) and write metrics, run and manifest."""
    start = time.perf_counter()
    ds = dataset if dataset is not None else load_beir(cfg.data.data_dir, cfg.data.split, cfg.data.qrels or None)
    eval_q = ds.eval_queries()
    if max_queries:
        eval_q = dict(list(eval_q.items())[:max_queries])
    qrels = {q: ds.qrels[q] for q in eval_q}
    run, pq = scored_run(cfg, ds, {q: v.text for q, v in eval_q.items()}, qrels, retriever, model)
    result = EvalResult(metrics=aggregate(pq), per_query=pq, run=run, seconds=time.perf_counter() - start)
    if output_dir is not None:
        write_result(cfg, ds, result, Path(output_dir), model or cfg.retrieval.model, retriever or cfg.retrieval.retriever)
    return result


def write_result(cfg: KadetConfig, ds: Dataset, result: EvalResult, out: Path, model: str, retriever: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": model,
        "retriever": retriever,
        "split": cfg.data.split,
        "queries": len(result.per_query),
        "metrics": result.metrics,
        "seconds": round(result.seconds, 2),
    }
    write_json(out / "metrics.json", summary)
    write_json(out / "per_query.json", result.per_query, indent=1)
    with open(out / "run.tsv", "w", encoding="utf-8") as fh:
        for qid, scores in result.run.items():
            for rank, (d, s) in enumerate(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])), start=1):
                fh.write(f"{qid}\tQ0\t{d}\t{rank}\t{s:.6f}\tkadet\n")
    m = Manifest(stage="evaluate", config_hash=cfg.hash())
    for name, path in ds.files.items():
        m.add_input(name, path)
    m.outputs = {"metrics": "metrics.json", "per_query": "per_query.json", "run": "run.tsv"}
    m.counts = {"queries": len(result.per_query), "documents": len(ds.corpus)}
    m.extra = {"model": model, "retriever": retriever, "metrics": result.metrics}
    m.write(out)


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """A plain-text table: one row per (label, metrics)."""
    if not rows:
        return ""
    names = list(rows[0][1].keys())
    width = max(len(label) for label, _ in rows + [("system", {})])
    head = f"{'system':<{width}}  " + "  ".join(f"{n:>10}" for n in names)
    lines = [head, "-" * len(head)]
    for label, metrics in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{metrics[n]:>10.4f}" for n in names))
    return "\n".join(lines)


def eval_data_fingerprint(ds: Dataset, split: str) -> str:
    """The *eval data fingerprint* (version tag ``kadet.eval_data``): one digest of the corpus,
    queries and qrels a metric was measured on."""
    import hashlib

    from kadet.core.manifest import digest

    h = hashlib.sha256(split.encode())
    for name in sorted(ds.files):
        h.update(name.encode() + b"=" + digest(ds.files[name]).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def synthetic_dev_qrels(labels_path: str | Path) -> tuple[dict[str, str], dict[str, str], Qrels]:
    """The dev split of ``labels.jsonl`` as an evaluation set: query text, type, and its source
    passage as the one relevant document."""
    from kadet.kit.data import read_records

    rows = read_records(labels_path, "qid", {"query": str, "type": str, "source_doc_id": str})
    dev = [r for r in rows if r.get("split") == "dev"]
    return ({r["qid"]: r["query"] for r in dev}, {r["qid"]: r["type"] for r in dev},
            {r["qid"]: {r["source_doc_id"]: 1} for r in dev})


def mean_by_type(per_query: Mapping[str, Mapping[str, Mapping[str, float]]], types: Mapping[str, str],
                 metric: str) -> dict[str, dict[str, float]]:
    """``{type: {"queries": n, system: mean metric}}`` over the queries of each type that were
    scored (``per_query[system][qid][metric]``), types sorted."""
    by_type: dict[str, dict[str, float]] = {}
    first = next(iter(per_query.values()), {})
    for qid, t in types.items():
        if qid not in first:
            continue
        row = by_type.setdefault(t, {"queries": 0, **{name: 0.0 for name in per_query}})
        row["queries"] += 1
        for name, scores in per_query.items():
            row[name] += scores.get(qid, {}).get(metric, 0.0)
    for row in by_type.values():
        for name in per_query:
            row[name] /= max(1, row["queries"])
    return dict(sorted(by_type.items()))


SILVER_DIR = "silver"


def write_silver_set(cfg: KadetConfig, labels_path: str | Path, out: Path) -> tuple[Path, dict[str, str]]:
    """The held-out synthetic queries of ``labels.jsonl`` (split ``silver``, judged by the
    teacher) as a BEIR folder over the whole corpus; returns it and each query's type."""
    import shutil

    from kadet.kit.data import corpus_file, read_records
    from kadet.core.io import write_jsonl

    rows = [r for r in read_records(labels_path, "qid", {"query": str, "type": str}) if r.get("split") == "silver"]
    if not rows:
        raise DataError(labels_path, "no held-out silver queries (split 'silver'): the label step held none out; "
                        "was it run for a corpus with judged queries? Rerun label, or set evaluation.kind=gold")
    src = corpus_file(cfg.data.data_dir)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / f"corpus{src.suffix}")
    write_jsonl(out / "queries.jsonl", ({"_id": r["qid"], "text": r["query"], "metadata": {"type": r["type"]}}
                                        for r in rows))
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for r in rows:
            for doc, grade in sorted((r.get("silver_qrels") or {r["source_doc_id"]: 2}).items()):
                fh.write(f"{r['qid']}\t{doc}\t{int(grade)}\n")
    return out, {r["qid"]: r["type"] for r in rows}


def paired_bootstrap(base: Mapping[str, float], candidate: Mapping[str, float], resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap over queries of the mean difference ``candidate - base`` of one
    per-query metric (Efron & Tibshirani; as in Sakai 2006 for IR): the mean, the two-sided
    ``confidence`` interval and the fraction of resamples in which the candidate is ahead."""
    import numpy as np

    qids = sorted(set(base) & set(candidate))
    if not qids:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_ahead": float("nan"),
                "queries": 0, "confidence": confidence}
    d = np.array([candidate[q] - base[q] for q in qids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for s in range(0, resamples, 1000):  # bounded memory whatever the number of queries
        n = min(1000, resamples - s)
        means[s : s + n] = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    return {"mean": float(d.mean()), "ci_low": float(np.quantile(means, alpha)),
            "ci_high": float(np.quantile(means, 1 - alpha)), "p_ahead": float((means > 0).mean()),
            "queries": len(d), "confidence": confidence}


#: The retrievers every comparison measures: each model alone, and each model's dense run fused
#: with the same BM25 run (RRF); BM25 alone is the reference both are read against.
COMPARED = ("dense", "hybrid")


def compare_retrievers(cfg: KadetConfig, ds: Dataset, texts: dict[str, str], qrels: Qrels,
                       systems: Mapping[str, str]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per-query metrics ``{retriever: {system: {qid: metrics}}}`` for ``dense`` and ``hybrid`` of
    each model in ``systems`` and for ``bm25`` (system ``bm25``), from one BM25 run and one dense
    run per model: the same runs :func:`retrieve` makes, without searching twice."""
    r, e = cfg.retrieval, cfg.evaluation

    def score(run: Run) -> dict[str, dict[str, float]]:
        run = top_k(run, r.top_k)
        if e.ignore_identical_ids:
            run = drop_identical_ids(run)
        return per_query_metrics(qrels, run, e.ndcg_k, e.recall_k, e.mrr_k)

    depth = max(r.top_k, r.rrf_depth)
    bm25 = BM25Retriever.from_config(ds.corpus, cfg).search(texts, depth)
    out: dict = {"dense": {}, "hybrid": {}, "bm25": {"bm25": score(bm25)}}
    for name, model in systems.items():
        retriever = DenseRetriever.from_config(Encoder.from_config(cfg, model), ds.corpus, cfg, index="exact")
        dense = retriever.search(texts, depth)
        out["dense"][name] = score(dense)
        out["hybrid"][name] = score(reciprocal_rank_fusion([dense, bm25], k=r.rrf_k, depth=r.rrf_depth))
    return out


def compare(cfg: KadetConfig, candidate: str, output_dir: str | Path, labels_path: str | Path | None = None,
            base: str | None = None) -> Comparison:
    """Base model and candidate on the same test data (and, with ``labels_path``, nDCG@10 per
    synthetic query type on the dev queries). Writes ``comparison.json`` and returns it."""
    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind, ds, silver_types = eval_set(cfg, out, labels_path)
    eval_q = ds.eval_queries()
    qrels = {q: ds.qrels[q] for q in eval_q}
    systems = {"base": base or cfg.retrieval.model, "candidate": candidate}
    gate, ndcg = cfg.evaluation.retriever, cfg.evaluation.ndcg
    runs = compare_retrievers(cfg, ds, {q: v.text for q, v in eval_q.items()}, qrels, systems)
    per_query = runs[gate]
    comp = Comparison(
        # a hybrid gate's numbers are not comparable with a dense champion's: another evaluation
        eval_data=eval_data_fingerprint(ds, cfg.data.split) + ("+hybrid" if gate == "hybrid" else ""),
        data_dir=str(cfg.data.data_dir), retriever=gate, split=cfg.data.split, queries=len(qrels), models=systems,
        kind=kind, silver_dir=SILVER_DIR if kind == "silver" else "",   # the register step re-evaluates on it
        base=aggregate(per_query["base"]), candidate=aggregate(per_query["candidate"]),
        delta={ndcg: _gain(cfg, per_query)},
        # every retriever, the gate's included: {"dense": {"base": .., "candidate": .., "delta": ..}, "bm25": ..}
        retrievers={r: {name: aggregate(pq) for name, pq in runs[r].items()} | {"delta": {ndcg: _gain(cfg, runs[r])}}
                    for r in COMPARED} | {"bm25": aggregate(runs["bm25"]["bm25"])})
    if silver_types:   # the held-out synthetic queries have types: nDCG per type from the run above
        comp.by_type = mean_by_type(per_query, silver_types, ndcg)
    elif labels_path is not None:
        comp.by_type = dev_by_type(cfg, ds, labels_path, systems)
    comp.seconds = round(time.perf_counter() - start, 1)
    write_json(file_in(out, "evaluate", "comparison"), comp.to_json())
    write_json(file_in(out, "evaluate", "per_query"), per_query, indent=1)
    write_compare_manifest(cfg, out, ds, labels_path, comp)
    return comp


def eval_set(cfg: KadetConfig, out: Path, labels_path: str | Path | None) -> tuple[str, Dataset, dict[str, str]]:
    """``(kind, dataset, query types)``: the corpus's judged queries (gold, no types), or, without
    them, the held-out silver queries of ``labels_path`` written to ``out/silver`` with their types."""
    kind = eval_kind(cfg.data.data_dir, cfg.data.split, cfg.data.qrels, cfg.evaluation.kind)
    if kind != "silver":
        return kind, load_beir(cfg.data.data_dir, cfg.data.split, cfg.data.qrels or None), {}
    if labels_path is None:
        raise KadetError("silver evaluation (no judged queries for this corpus) needs the label step's labels.jsonl")
    silver_dir, silver_types = write_silver_set(cfg, labels_path, out / SILVER_DIR)
    return kind, load_beir(silver_dir, "test"), silver_types


def _gain(cfg: KadetConfig, per_query: Mapping) -> dict:
    """The paired bootstrap of the candidate's nDCG over the base model's in ``per_query[system]``."""
    ndcg = cfg.evaluation.ndcg
    return paired_bootstrap({q: v[ndcg] for q, v in per_query["base"].items()},
                            {q: v[ndcg] for q, v in per_query["candidate"].items()},
                            confidence=cfg.register.confidence, seed=cfg.seed)


def dev_by_type(cfg: KadetConfig, ds: Dataset, labels_path: str | Path, systems: Mapping[str, str]) -> dict:
    """nDCG per synthetic query type of each system (dense) on the dev queries of ``labels.jsonl``."""
    dev_texts, dev_types, dev_qrels = synthetic_dev_qrels(labels_path)
    dev = {name: scored_run(cfg, ds, dev_texts, dev_qrels, "dense", model)[1] for name, model in systems.items()
           } if dev_texts else {}
    return mean_by_type(dev, dev_types, cfg.evaluation.ndcg)


def write_compare_manifest(cfg: KadetConfig, out: Path, ds: Dataset, labels_path: str | Path | None,
                           comp: Comparison) -> None:
    m = Manifest(stage="evaluate", config_hash=cfg.hash())
    for name, path in ds.files.items():
        m.add_input(name, path)
    if labels_path is not None:
        m.add_input("labels", labels_path)
    m.outputs = dict(STAGES["evaluate"].outputs)
    m.counts = {"queries": comp.queries, "documents": len(ds.corpus)}
    m.extra = {"base": comp.base, "candidate": comp.candidate, "eval_data": comp.eval_data}
    m.write(out)
