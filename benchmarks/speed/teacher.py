"""LLM query-likelihood teacher: naive scoring vs prefix caching, same pairs, same run.

    python -m benchmarks.speed.teacher --pairs 2000

The pairs are SciFact *train* queries with the base model's dense top-20 (100 queries x 20 =
2,000 pairs), the shape the label stage scores. ``naive`` runs every (passage prompt + query)
sequence in full and applies the LM head at every position; ``cached`` runs each distinct
passage prompt once, reuses its KV cache for every query that has it in its list, and applies
the LM head only where query tokens are predicted. Prints pairs/s for both, the speed-up
(target >= 3x) and the maximum absolute score difference (must be < 1e-4 in fp32).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kadet.kit.models import offline_env

offline_env(tokenizer_threads=True)


def main() -> None:
    import torch

    from kadet.core.config import load_config
    from kadet.kit.data import load_beir
    from kadet.stages.evaluate import retrieve
    from kadet.kit.search import ranked
    from kadet.stages.label.teachers import QueryLikelihoodTeacher
    from kadet.tools.datasets import find_scifact

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--work-dir", default=".kadet")
    args = ap.parse_args()

    data = find_scifact()
    cfg = load_config(None, [f"data.data_dir={data}", f"work_dir={args.work_dir}"])
    ds = load_beir(data, "train")
    queries = dict(list(ds.eval_queries().items())[: (args.pairs + args.depth - 1) // args.depth])
    run = retrieve(cfg, ds, {q: v.text for q, v in queries.items()}, retriever="dense")
    pairs = [(queries[q].text, ds.corpus[d].full_text()) for q in queries for d in ranked(run[q])[: args.depth]]
    pairs = pairs[: args.pairs]
    teacher = QueryLikelihoodTeacher("smollm2", ds.corpus, cfg.cache_dir, batch_size=args.batch_size, device="cpu")
    teacher.score_pairs(pairs[:8])  # warm-up
    timings, scores = {}, {}
    for name, fn in (("naive", teacher.score_pairs_naive), ("cached", teacher.score_pairs)):
        t0 = time.perf_counter()
        scores[name] = fn(pairs)
        timings[name] = time.perf_counter() - t0
    diff = float(np.abs(scores["naive"] - scores["cached"]).max())
    distinct = len({p for _, p in pairs})
    print(f"SmolLM2-135M query likelihood, {len(pairs)} pairs ({len(queries)} queries x top-{args.depth}, "
          f"{distinct} distinct passages), cpu, {torch.get_num_threads()} threads, fp32")
    print(f"{'scorer':<10}{'seconds':>10}{'pairs/s':>10}")
    for name, sec in timings.items():
        print(f"{name:<10}{sec:>10.1f}{len(pairs) / sec:>10.1f}")
    speed = timings["naive"] / timings["cached"]
    print(f"speed-up cached / naive: {speed:.2f}x (target >= 3x: {'met' if speed >= 3 else 'NOT met'})")
    print(f"max |score difference|: {diff:.2e} (must be < 1e-4: {'ok' if diff < 1e-4 else 'FAILED'})")


if __name__ == "__main__":
    main()
