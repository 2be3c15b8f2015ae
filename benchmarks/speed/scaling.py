"""Every stage's per-item cost at 1x and 10x its input: a linear stage keeps it flat.

    python -m benchmarks.speed.scaling                 # sizes 1,000 and 10,000 (distill: 200 and 2,000)
    python -m benchmarks.speed.scaling --scale 0.2     # a quick look

For each stage, kadet's real code on synthetic inputs (no LLM, a tiny random model for distill;
``benchmarks/speed/mine.py`` measures mining on SciFact with the real models), timed at n and 10 n.
The peer of each row is the same stage at 1x in the same run: the table prints microseconds per
item at both sizes and their ratio (1.0 = linear; 10 would be quadratic). Report the machine.

=============  =================================================================
prepare        clean (normalise, sort-based near-duplicate check) + sample, per passage
generate       plan requests + sentence queries + ``write_queries`` from a full log, per passage
label          the filters, normalisation and split of ``apply_filters``, per query list
distill        one epoch, query-side, tiny model, batch 32, per training query
evaluate       trec_eval metrics of a run (100 documents per query), per query
logs           ``Journal.append`` + ``Journal.records`` of a resumable log, per record
=============  =================================================================
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from kadet.kit.models import offline_env

offline_env()

WORDS = ("protein cell gene expression tumour receptor binding pathway mouse human patient trial dose risk "
         "therapy signal enzyme membrane mutation response infection virus immune blood vessel").split()


def _docs(n: int, seed: int = 0):
    from kadet.kit.data import Document

    rng = random.Random(seed)
    return [Document(f"d{i}", ". ".join(" ".join(rng.choices(WORDS, k=12)).capitalize() for _ in range(4)) + ".")
            for i in range(n)]


def bench_prepare(n: int) -> float:
    from kadet.core.config import PrepareConfig
    from kadet.core.manifest import Manifest
    from kadet.stages.prepare import select_passages

    corpus = {d.doc_id: d for d in _docs(n)}
    t = time.perf_counter()
    select_passages(corpus, set(), PrepareConfig(sample_size=n // 2), manifest=Manifest("prepare"))
    return time.perf_counter() - t


def bench_generate(n: int) -> float:
    from kadet.core.config import load_config
    from kadet.stages.generate import LOG_NAME, plan_requests, write_queries
    from kadet.core.io import append_jsonl

    cfg = load_config(None, ["generate.types={question: 1, sentence: 1}"])
    docs = _docs(n)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        reqs = plan_requests(docs, cfg.generate, cfg.seed)
        append_jsonl(Path(tmp) / LOG_NAME, [
            {"key": r.key, "doc_id": r.doc_id, "type": r.qtype, "k": r.k, "raw": f"what binds {r.passage.split()[1]} {i}",
             "text": "", "status": "ok", "prompt_id": r.prompt_id, "prompt_sha": r.prompt_sha, "backend": "b",
             "model": "m"} for i, r in enumerate(reqs)])
        write_queries(cfg, reqs, Path(tmp), 0, 0.0, docs)
        return time.perf_counter() - t


def bench_label(n: int) -> float:
    from kadet.core.config import load_config
    from kadet.stages.label.stage import apply_filters
    from kadet.core.manifest import Manifest

    rng = random.Random(0)
    items = [{"qid": f"q{i}", "source_doc_id": f"d{i}", "doc_ids": [f"d{i}"] + [f"x{i}-{j}" for j in range(29)],
              "scores": sorted((rng.random() for _ in range(30)), reverse=True)} for i in range(n)]
    t = time.perf_counter()
    apply_filters(items, load_config().label, 42, Manifest("label"))
    return time.perf_counter() - t


def bench_distill(n: int, model: Path, work: Path) -> float:
    from kadet.core.config import load_config
    from kadet.stages.distill import distill
    from kadet.core.io import write_jsonl

    docs = _docs(n * 4, seed=1)
    rng = random.Random(0)
    rows = [{"qid": f"q{i}", "query": " ".join(rng.choices(WORDS, k=5)), "type": "sentence", "source_doc_id": "d0",
             "split": "dev" if i % 10 == 0 else "train",
             "passages": [{"doc_id": d.doc_id, "text": d.text, "score": 1.0 - k / 8}
                          for k, d in enumerate(rng.sample(docs, 8))]} for i in range(n)]
    labels = work / f"labels-{n}.jsonl"
    write_jsonl(labels, rows)
    cfg = load_config(None, [f"retrieval.model={model}", f"work_dir={work}", "distill.mode=query", "distill.epochs=1",
                             "distill.batch_size=32", "distill.chunk_size=64", "distill.progress=false",
                             "distill.passage_max_len=64"])
    t = time.perf_counter()
    distill(cfg, labels, work / f"out-{n}")
    return time.perf_counter() - t


def bench_evaluate(n: int) -> float:
    from kadet.stages.evaluate import aggregate, per_query_metrics

    rng = random.Random(0)
    qrels = {f"q{i}": {f"d{rng.randrange(1000)}": 1} for i in range(n)}
    run = {q: {f"d{rng.randrange(1000)}": rng.random() for _ in range(100)} for q in qrels}
    t = time.perf_counter()
    aggregate(per_query_metrics(qrels, run))
    return time.perf_counter() - t


def bench_logs(n: int) -> float:
    from kadet.core.journal import Journal

    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "log.jsonl")
        t = time.perf_counter()
        for s in range(0, n, 64):
            journal.append([{"key": f"k{i}", "raw": "a generated query", "scores": [0.5] * 20}
                            for i in range(s, min(n, s + 64))])
        journal.records()
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every size (default 1: 1,000 and 10,000)")
    args = ap.parse_args()
    from tests.doubles.data import make_tiny_st

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = make_tiny_st(work / "tiny")
        base = {"prepare": 1000, "generate": 1000, "label": 1000, "distill": 200, "evaluate": 1000, "logs": 1000}
        fns = {"prepare": bench_prepare, "generate": bench_generate, "label": bench_label,
               "distill": lambda n: bench_distill(n, model, work), "evaluate": bench_evaluate, "logs": bench_logs}
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n")
        print("| stage | n | us/item at n | 10 n | us/item at 10 n | ratio |")
        print("|---|---|---|---|---|---|")
        for name, fn in fns.items():
            n = max(10, int(base[name] * args.scale))
            fn(min(n, 50))  # warm up imports and caches
            small, large = fn(n) / n * 1e6, fn(10 * n) / (10 * n) * 1e6
            print(f"| {name} | {n:,} | {small:,.1f} | {10 * n:,} | {large:,.1f} | {large / small:.2f} |", flush=True)


if __name__ == "__main__":
    main()
