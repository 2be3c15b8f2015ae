"""Query-generation throughput, all in one run:

1. local backend (packaged SmolLM2, CPU): batched generation vs one prompt at a time
   (target >= 4x queries/s);
2. tgi backend against a real llama.cpp server (OpenAI-compatible, SmolLM2 GGUF):
   concurrency 1 vs 8.

    python -m benchmarks.speed.generate --requests 32

Both sides of each comparison generate for the same SciFact passages and query types with the
same settings; only the batching / concurrency differs. Prints a table.
"""

from __future__ import annotations

import argparse
import time

from kadet.kit.models import offline_env

offline_env(tokenizer_threads=True)


def main() -> None:
    from kadet.core.config import load_config
    from kadet.kit.data import read_corpus
    from kadet.stages.generate import LocalBackend, TGIBackend, plan_requests
    from kadet.kit.models import smollm2_gguf
    from kadet.tools.datasets import find_scifact
    from tests.doubles.servers import llama_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32, help="prompts per measurement")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--work-dir", default=".kadet")
    ap.add_argument("--skip-tgi", action="store_true")
    args = ap.parse_args()

    corpus = read_corpus(find_scifact() / "corpus.jsonl")
    cfg = load_config(None, [f"work_dir={args.work_dir}", "generate.types={question: 1, claim: 1}",
                             "generate.temperature=0", f"generate.batch_size={args.batch_size}"])
    passages = list(corpus.values())[: (args.requests + 1) // 2]
    reqs = plan_requests(passages, cfg.generate, cfg.seed)[: args.requests]
    rows = []

    local = LocalBackend(cfg.generate, cfg.cache_dir, cfg.seed)
    local.generate(reqs[:2], batch_size=2)  # warm-up
    for label, bs in ((f"local batched ({args.batch_size})", args.batch_size), ("local one at a time", 1)):
        t0 = time.perf_counter()
        local.generate(reqs, batch_size=bs)
        rows.append((label, len(reqs), time.perf_counter() - t0))
    del local

    if not args.skip_tgi:
        with llama_server(str(smollm2_gguf()), n_ctx=4096) as url:
            for conc in (1, 8):
                c = load_config(None, ["generate.backend=tgi", f"generate.tgi.url={url}", f"generate.tgi.concurrency={conc}",
                                       "generate.temperature=0", "generate.tgi.timeout_s=300"])
                backend = TGIBackend(c.generate)
                backend.generate(reqs[:1])  # warm-up
                t0 = time.perf_counter()
                out = backend.generate(reqs)
                failed = sum(isinstance(o, BaseException) for o in out)
                rows.append((f"tgi llama.cpp concurrency {conc}" + (f" ({failed} failed)" if failed else ""),
                             len(reqs), time.perf_counter() - t0))

    print(f"{'backend':<36}{'queries':>8}{'seconds':>10}{'queries/s':>11}")
    for label, n, sec in rows:
        print(f"{label:<36}{n:>8}{sec:>10.1f}{n / sec:>11.2f}")
    speed = {label: n / sec for label, n, sec in rows}
    b = speed[rows[0][0]] / speed[rows[1][0]]
    print(f"local batched / one at a time: {b:.2f}x (target >= 4x: {'met' if b >= 4 else 'NOT met'})")
    if not args.skip_tgi:
        print(f"tgi concurrency 8 / 1: {speed[rows[3][0]] / speed[rows[2][0]]:.2f}x")


if __name__ == "__main__":
    main()
