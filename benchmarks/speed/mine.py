"""Mining cost against the number of queries: must grow linearly.

    python -m benchmarks.speed.mine --sizes 500,2000,8000

Queries are cheap pseudo-queries (a sentence of a SciFact passage, the passage is the source),
so the measurement needs no LLM. Each size runs kadet's real ``mine_candidates`` (dense and
BM25 retrieval of the top 100, round-trip filter, fusion) on one shared set of retrievers: the
corpus is encoded once, outside the timing. The peer in the same run is the fusion as it was
written before (``reciprocal_rank_fusion`` of *every* query's runs once per query), timed on the
same retrieved runs for the sizes up to ``--peer-max``: it is quadratic. Prints a table with
microseconds per query; a linear stage keeps that column flat.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from kadet.kit.models import offline_env

offline_env(tokenizer_threads=True)


def pseudo_queries(corpus, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    docs = [d for d in corpus.values() if len(d.text.split(". ")) > 1]
    out = []
    for i in range(n):
        doc = docs[i % len(docs)]
        sentence = rng.choice(doc.text.split(". "))
        out.append({"qid": f"q{i}", "text": sentence[:200], "type": "sentence", "source_doc_id": doc.doc_id})
    return out


def quadratic_fusion(queries, runs, k):
    """The pre-fix loop body: fuse all queries' runs, then pick one query."""
    from kadet.kit.search import reciprocal_rank_fusion

    for q in queries:
        reciprocal_rank_fusion([run for run in runs.values() if q["qid"] in run], k=k)[q["qid"]]


def main() -> None:
    from kadet.core.config import load_config
    from kadet.kit.data import read_corpus
    from kadet.core.manifest import Manifest
    from kadet.stages.mine import build_retrievers, mine_candidates

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="BEIR folder (default: ../shared/data/beir/scifact)")
    ap.add_argument("--sizes", default="500,2000,8000")
    ap.add_argument("--peer-max", type=int, default=2000, help="largest size the quadratic peer runs on")
    ap.add_argument("--work-dir", default=".kadet")
    args = ap.parse_args()

    data = Path(args.data) if args.data else Path(__file__).resolve().parents[2] / "../shared/data/beir/scifact"
    cfg = load_config(None, [f"work_dir={args.work_dir}"])
    corpus = read_corpus(data / "corpus.jsonl")
    t0 = time.perf_counter()
    retrievers = build_retrievers(cfg, corpus)
    print(f"{len(corpus)} documents, retrievers {list(retrievers)} built in {time.perf_counter() - t0:.1f} s "
          f"(cpu, {torch.get_num_threads()} threads)")
    print(f"{'queries':>8}{'kadet mine s':>14}{'us/query':>10}{'kept':>7}{'peer fusion s':>15}{'us/query':>10}")
    for n in (int(s) for s in args.sizes.split(",")):
        queries = pseudo_queries(corpus, n)
        m = Manifest(stage="mine")
        t0 = time.perf_counter()
        rows = mine_candidates(cfg, queries, corpus, retrievers, m)
        sec = time.perf_counter() - t0
        peer = ""
        if n <= args.peer_max:
            runs = {name: r.search({q["qid"]: q["text"] for q in queries}, cfg.mine.top_k or cfg.retrieval.top_k)
                    for name, r in retrievers.items()}
            t0 = time.perf_counter()
            quadratic_fusion(queries, runs, cfg.retrieval.rrf_k)
            psec = time.perf_counter() - t0
            peer = f"{psec:>15.1f}{psec / n * 1e6:>10.0f}"
        print(f"{n:>8}{sec:>14.1f}{sec / n * 1e6:>10.0f}{len(rows):>7}{peer}", flush=True)


if __name__ == "__main__":
    main()
