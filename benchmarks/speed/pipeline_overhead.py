"""Pipeline overhead: the local KFP run of the DAG vs the same steps called in one process.

    python -m benchmarks.speed.pipeline_overhead --docs 1000 --queries 50 --sample-size 40

    python -m benchmarks.speed.pipeline_overhead --cold-start [--tasks 5]

Both run the same steps (``kadet.kubeflow.steps``: prepare, generate, mine, label, distill, evaluate,
register, promote/challenger) with the same config on the same SciFact slice, each in a fresh
work dir (no embedding cache carried over; the dequantised SmolLM2 is copied in from a warm-up
so neither pays for it). ``kfp-local`` is ``kfp.local.SubprocessRunner``: one Python process
per task, artifacts copied between task folders. ``direct`` calls the step functions one
after another in this process. Prints both wall times and the overhead (target <= 5 %).

``--cold-start``: one task's start, alone, by runner: a component that does what every kadet task
does first (imports kadet's steps, MLflow, sentence-transformers and torch: kadet.tools.plan's
TASK_IMPORTS) run ``--tasks`` times by ``kfp.local.SubprocessRunner`` (a Python process here) and by
``kfp.local.DockerRunner`` in the component image (``kadet run --runner docker``: uid 10001,
read-only root, the work dir mounted); prints min / median / max seconds per task and the ratio.
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


def _probe() -> str:
    # what every kadet task imports first (kadet.tools.plan.TASK_IMPORTS)
    import kadet.kubeflow.steps, kadet.registry.tracking, mlflow, sentence_transformers, torch  # noqa: F401, E401

    return "ok"


_probe.__annotations__ = {"return": str}   # KFP reads real types (this module's annotations are strings)


def cold_start(tasks: int, image: str) -> dict[str, list[float]]:
    """Seconds per task, by runner, of a component that only imports what a kadet task imports."""
    from kfp import dsl, local

    from kadet.kubeflow import containers

    def probe_on(base_image: str | None):
        return dsl.component(_probe, base_image=base_image or "python:3.11", install_kfp_package=False)

    work = Path(tempfile.mkdtemp(prefix="kadet-coldstart-"))
    (work / "kfp").mkdir()
    seconds: dict[str, list[float]] = {"subprocess": [], "docker": []}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"))
    probe = probe_on(None)
    for _ in range(tasks):
        t0 = time.perf_counter()
        assert probe().output == "ok"
        seconds["subprocess"].append(time.perf_counter() - t0)
    with containers.docker_api(), containers.task_containers():
        containers.check_image(image)
        containers.share_work_dir(work)
        local.init(runner=local.DockerRunner(**containers.run_args(work, None)), pipeline_root=str(work / "kfp"))
        probe = probe_on(image)
        for _ in range(tasks):
            t0 = time.perf_counter()
            assert probe().output == "ok"
            seconds["docker"].append(time.perf_counter() - t0)
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def print_cold_start(seconds: dict[str, list[float]], image: str) -> None:
    import statistics

    from benchmarks.common import machine

    print(f"\none task's cold start (start + kadet's imports), {len(seconds['subprocess'])} tasks each; {machine()}")
    print(f"{'runner':<12} {'min s':>7} {'median s':>9} {'max s':>7}")
    for name, secs in seconds.items():
        print(f"{name:<12} {min(secs):7.2f} {statistics.median(secs):9.2f} {max(secs):7.2f}")
    ratio = statistics.median(seconds["docker"]) / statistics.median(seconds["subprocess"])
    print(f"docker ({image}) / subprocess, median: {ratio:.2f}x")


def main() -> None:
    from kadet.kubeflow.local import local_config_text, run_local
    from tests.doubles.data import scifact_slice

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--sample-size", type=int, default=40)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--cold-start", action="store_true", help="time one task's start by runner, nothing else")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--image", default=None, help="the component image (default: make -C images local's)")
    args = ap.parse_args()
    if args.cold_start:
        from kadet.kubeflow.containers import DEFAULT_LOCAL_IMAGE

        image = args.image or DEFAULT_LOCAL_IMAGE
        print_cold_start(cold_start(args.tasks, image), image)
        return

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
