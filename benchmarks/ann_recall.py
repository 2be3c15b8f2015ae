"""The approximate dense index against exact search: recall@100 on SciFact, and time at 1M passages.

    python -m benchmarks.ann_recall                  # SciFact (real model), then 1M synthetic passages
    python -m benchmarks.ann_recall --size 200000    # a smaller second part

1. **SciFact** (5,183 passages, its 1,109 train + test queries), embedded with the packaged base
   model (all-MiniLM-L6-v2, 384 dimensions): the recall@100 of :class:`kadet.kit.search.DenseIndex`
   forced to ``ivf`` against exact search, for several ``nprobe``, and the default's (probes
   calibrated to ``recall_target`` on 64 of the queries; exact search when that takes over half).
2. **Scale** (``--size``, default 1,000,000): SciFact's own embeddings can not be multiplied by
   encoding (2 cores), so each synthetic passage is a SciFact passage embedding plus Gaussian noise
   (sd 0.5 / sqrt(384) per dimension, renormalised: clustered like the real ones), and 5,000 queries
   (the local profile's cap) the same way from SciFact's queries. Wall time and peak RSS growth of
   exact search (blocked top-100) and of the IVF index (build + search), and IVF's recall@100.

Rows go to ``benchmarks/results/ann_recall.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import REPO, machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "ann_recall.jsonl"


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(approx, exact)]))


def scifact_embeddings(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    from kadet.kit.data import load_beir
    from kadet.kit.encode import Encoder
    from kadet.tools.datasets import find_scifact

    root = find_scifact()
    ds = load_beir(root, "test")
    queries = [q.text for q in ds.queries.values()]          # train and test queries alike
    enc = Encoder("all-MiniLM-L6-v2", device="cpu", cache_dir=cache)
    docs = enc.encode([d.full_text() for d in ds.corpus.values()], kind="document")
    return docs, enc.encode(queries, kind="query")


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    from kadet.kit.models import offline_env
    from kadet.kit.search import DenseIndex, exact_topk

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="synthetic passages of the timing part")
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--nprobe", type=int, default=0, help="of the scale part (0: the default, calibrated)")
    ap.add_argument("--cache", default="/tmp/kadet-ann-cache", help="embedding cache of the SciFact part")
    args = ap.parse_args()
    offline_env()
    stamp = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    rows = []
    docs, queries = scifact_embeddings(Path(args.cache))
    _, exact = exact_topk(queries, docs, 100)
    print(f"SciFact: {len(docs):,} passages, {len(queries):,} queries, all-MiniLM-L6-v2")
    print("| index | nlist | nprobe | recall@100 vs exact |\n|---|---|---|---|")
    # the default (nprobe 0): probes calibrated on 64 of the queries to recall_target, or exact search
    default = DenseIndex(docs, kind="ivf")
    found = default.search(queries, 100)[1]
    nlist = default.info["nlist"]
    probes = {1, 4, -(-nlist // 8), nlist // 4, nlist // 2, *(round(f * nlist) for f in (0.6, 0.7, 0.8)), nlist}
    for nprobe in sorted(probes - {0}):
        index = DenseIndex(docs, kind="ivf", nprobe=nprobe)
        r = recall(index.search(queries, 100)[1], exact)
        print(f"| ivf | {nlist} | {nprobe} | {r:.4f} |")
        rows.append({"part": "scifact", "nlist": nlist, "nprobe": nprobe, "default": False, "recall@100": r})
    r = recall(found, exact)
    chosen = default.info.get("nprobe", "exact search")
    print(f"| default: calibrated to {default.info['recall_target']} on {default.recall_sample} queries "
          f"(tried {default.info['calibrated']}) | {nlist} | {chosen} | {r:.4f} |")
    rows.append({"part": "scifact", "nlist": nlist, "nprobe": chosen, "default": True, "recall@100": r,
                 "info": default.info})

    rng = np.random.default_rng(0)
    n, d = args.size, docs.shape[1]
    if not n:                                               # --size 0: SciFact alone
        save(stamp, rows)
        return

    def noisy(src: np.ndarray, count: int) -> np.ndarray:
        x = src[rng.integers(0, len(src), count)] + rng.normal(0, 0.5 / np.sqrt(d), (count, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    big = np.concatenate([noisy(docs, min(100_000, n - s)) for s in range(0, n, 100_000)])
    qs = noisy(queries, args.queries)
    base = peak_gib()
    t0 = time.perf_counter()
    _, ex = exact_topk(qs, big, 100)
    t_exact = time.perf_counter() - t0
    peak_exact = peak_gib() - base
    t0 = time.perf_counter()
    index = DenseIndex(big, kind="ivf", nprobe=args.nprobe)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ap_idx = index.search(qs, 100)
    t_search = time.perf_counter() - t0
    r = recall(ap_idx, ex)
    print(f"\n{n:,} synthetic passages ({d} dimensions), {len(qs):,} queries, top 100:")
    print("| search | seconds | peak RSS growth GiB | recall@100 |\n|---|---|---|---|")
    print(f"| exact (blocked) | {t_exact:.1f} | {peak_exact:.2f} | 1.0000 |")
    print(f"| ivf nlist {index.info['nlist']} nprobe {index.info.get('nprobe', '(exact)')} | {t_build:.1f} build + "
          f"{t_search:.1f} search | {peak_gib() - base:.2f} | {r:.4f} |")
    rows.append({"part": "scale", "passages": n, "dim": d, "queries": len(qs), "exact_s": round(t_exact, 1),
                 "ivf_build_s": round(t_build, 1), "ivf_search_s": round(t_search, 1), "ivf": index.info,
                 "recall@100": r})
    save(stamp, rows)


def save(stamp: dict, rows: list[dict]) -> None:
    with open(RESULTS, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({**stamp, **row}) + "\n")


if __name__ == "__main__":
    main()
