"""Encoding throughput: kadet's Encoder vs plain ``SentenceTransformer.encode``, same model, same run.

    python -m benchmarks.speed.encode --data ../shared/data/beir/scifact --docs 1000

Both encode the same passages with the same model on the CPU; kadet's on-disk cache is OFF
here (a warm cache would make the comparison meaningless). kadet runs at its defaults (length-
sorted batches under a token budget); ``SentenceTransformer.encode`` runs at its default batch
size (32) and at the other ``--st-batch-sizes``, so a hand-tuned ST is shown too. Each runs
``--repeats`` times, interleaved, after one warm-up; the best time counts. It also checks the
embeddings agree (max |diff|). Target: docs/s ratio kadet / ST(default) >= 1.0.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from kadet.kit.models import offline_env

offline_env(tokenizer_threads=True)


def main() -> None:
    from sentence_transformers import SentenceTransformer

    from kadet.kit.data import read_corpus
    from kadet.kit.encode import Encoder
    from kadet.kit.models import resolve_model_path
    from kadet.tools.datasets import find_scifact

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="BEIR folder (default: ../shared/data/beir/scifact)")
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--st-batch-sizes", default="32,16,64", help="first one is the reference")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    data = Path(args.data) if args.data else find_scifact()
    corpus = read_corpus(data / "corpus.jsonl")
    texts = [d.full_text() for d in list(corpus.values())[: args.docs]]
    path = str(resolve_model_path(args.model))

    enc = Encoder(path, device="cpu", cache_dir=None)
    st = SentenceTransformer(path, device="cpu", local_files_only=True)

    sizes = [int(b) for b in args.st_batch_sizes.split(",")]
    runners = {"kadet (defaults)": lambda: enc.encode(texts, kind="document")}
    for bs in sizes:
        runners[f"ST.encode batch {bs}"] = (
            lambda bs=bs: st.encode(texts, batch_size=bs, convert_to_numpy=True, show_progress_bar=False)
        )
    ref = f"ST.encode batch {sizes[0]}"
    for fn in runners.values():  # warm-up
        fn()
    best = {name: float("inf") for name in runners}
    out = {}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    diff = float(np.abs(out["kadet (defaults)"] - out[ref]).max())
    print(f"model {args.model}, {len(texts)} passages, cpu, {torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"{'encoder':<24}{'seconds':>10}{'docs/s':>10}{'kadet/this':>12}")
    for name, sec in best.items():
        print(f"{name:<24}{sec:>10.2f}{len(texts) / sec:>10.1f}{sec / best['kadet (defaults)']:>12.2f}")
    ratio = best[ref] / best["kadet (defaults)"]
    print(f"ratio kadet / {ref} (docs/s): {ratio:.2f} (target >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})")
    print(f"max |embedding diff| vs {ref}: {diff:.2e}")


if __name__ == "__main__":
    main()
