"""Pipeline overhead: the local KFP run of the DAG vs the same steps called in one process.

    python -m benchmarks.speed.pipeline_overhead --docs 1000 --queries 50 --sample-size 40

Both run the same steps (``kadet.kubeflow.steps``: prepare, generate, mine, label, distill, evaluate,
register, promote/challenger) with the same config on the same SciFact slice, each in a fresh
work dir (no embedding cache carried over; the dequantised SmolLM2 is copied in from a warm-up
so neither pays for it). ``kfp-local`` is ``kfp.local.SubprocessRunner``: one Python process
per task, artifacts copied between task folders. ``direct`` calls the step functions one
after another in this process. Prints both wall times and the overhead (target <= 5 %).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from kadet.kit.models import offline_env

offline_env(tokenizer_threads=True)


def run_direct(data: str, work: Path, config_text: str, shards: int = 1) -> None:
    """The DAG's steps in one process, in the DAG's order, on the same folders layout."""
    from kadet.kubeflow import steps
    from kadet.core.layout import output_path

    run = f"direct-{int(time.time())}"
    # the run's one config, resolved as the pipeline's first task does; each step reads it frozen
    resolved = steps.config_step({"config_yaml": config_text, "work_dir": str(work), "data_uri": data})
    sc = lambda **task: steps.step_config(resolved, {k.replace("__", "."): v for k, v in task.items()})  # noqa: E731
    out = work / "direct"
    steps.prepare_step(sc(), str(out / "prepare"), run)
    passages, corpus = output_path(out, "prepare", "passages"), output_path(out, "prepare", "corpus")
    for i in range(shards):
        steps.generate_step(sc(generate__shard_index=i, generate__num_shards=shards), passages,
                            str(out / f"generate-{i}"), run)
    steps.generate_merge_step(sc(generate__num_shards=shards), passages,
                              [str(out / f"generate-{i}") for i in range(shards)], str(out / "generate"), run)
    steps.mine_step(sc(), output_path(out, "generate", "queries"), corpus, str(out / "mine"), run)
    cands = output_path(out, "mine", "candidates")
    for i in range(shards):
        steps.label_step(sc(label__shard_index=i, label__num_shards=shards), cands, corpus, str(out / f"label-{i}"), run)
    steps.label_merge_step(sc(label__num_shards=shards), cands, corpus, [str(out / f"label-{i}") for i in range(shards)],
                           str(out / "label"), run)
    labels = output_path(out, "label", "labels")
    steps.distill_step(sc(), labels, str(out / "distill"), run)
    model = str(steps.model_folder(out / "distill"))
    steps.evaluate_step(sc(), model, labels, str(out / "evaluate"), run)
    gate = steps.register_step(sc(), model, str(out / "evaluate"), run)
    if gate["promote"]:
        steps.promote_step(sc(), gate["version"], run)
    else:
        steps.challenger_step(sc(), gate["version"], gate["reason"], run)


def main() -> None:
    from kadet.kubeflow.local import local_config_text, run_local
    from tests.doubles.data import scifact_slice

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--sample-size", type=int, default=40)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kadet-overhead-"))
    data = str(scifact_slice(tmp / "data", args.queries, args.docs))
    text = local_config_text(None, [f"prepare.sample_size={args.sample_size}", *args.overrides])

    warm = tmp / "warm"
    from kadet.core.config import config_from_text
    from kadet.llm.causal import load_causal_lm

    load_causal_lm(config_from_text(text).generate.model, warm / "cache", "cpu")  # dequantise once

    def fresh(name: str) -> Path:
        work = tmp / name
        shutil.copytree(warm / "cache", work / "cache")
        return work

    timings = {}
    t0 = time.perf_counter()
    run_local(data, str(fresh("kfp")), None, [f"prepare.sample_size={args.sample_size}", *args.overrides],
              shards=args.shards)
    timings["kfp-local"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_direct(data, fresh("direct"), text, args.shards)
    timings["direct"] = time.perf_counter() - t0

    overhead = timings["kfp-local"] / timings["direct"] - 1
    print(f"\nSciFact slice: {args.docs} docs, {args.queries} test queries, {args.sample_size} passages, "
          f"{args.shards} shard(s); {os.cpu_count()} CPUs")
    print(f"{'runner':<12} {'seconds':>9}")
    for name, sec in timings.items():
        print(f"{name:<12} {sec:9.1f}")
    print(f"overhead of the local KFP run: {100 * overhead:+.1f}% (target <= 5%: {'met' if overhead <= 0.05 else 'NOT met'})")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
