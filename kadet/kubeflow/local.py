"""Run the kadet DAG on this machine: ``kfp.local.SubprocessRunner``, no Docker, no cluster.

    kadet run --data ../shared/data/beir/scifact            # what the README's main job calls

The same pipeline function that compiles to ``kadet_pipeline.yaml`` runs here, each task in a
subprocess of this Python. Embedded defaults: the packaged models, offline; MLflow in sqlite at
``<work_dir>/mlflow.db`` with artifacts under ``<work_dir>/mlartifacts``; KFP artifacts under
``<work_dir>/kfp``; the CPU profile ``kadet/core/profiles/local.yaml`` under any ``--config``/``--set``.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from kadet.core.storage import mask_uri
from kadet.core.io import read_json
from kadet.kit.comparison import SILVER_CAVEAT, Comparison
from kadet.core.config import config_from_text, dump_config, load_config, profile_config
from kadet.core import lifeline
from kadet.core.errors import KadetError

log = logging.getLogger(__name__)


def local_config_text(config: str | None = None, overrides: list[str] | None = None, profile: str = "local") -> str:
    """The profile, then ``config`` (a YAML file), then ``overrides``, as one YAML text."""
    return dump_config(load_config(config, overrides, base=profile_config(profile)))


def run_local(data: str, work_dir: str = ".kadet", config: str | None = None, overrides: list[str] | None = None,
              shards: int = 1, caching: bool = False, profile: str = "local", verbose: bool = False,
              console_to_stderr: bool = False, resolved=None, runner: str = "subprocess", image: str | None = None,
              **params) -> dict:
    """Run the whole DAG locally; returns the registry outcome and per-stage wall times.

    ``resolved``: the run's config as the caller already resolved it (the CLI, which took the
    work dir's lock from it); else ``profile``, ``config`` and ``overrides`` are resolved here.
    ``runner``: ``subprocess`` (each task a Python process here) or ``docker`` (each task in the
    component ``image``, as the cluster runs it: kadet/kubeflow/containers.py).
    The console shows one line per stage as it starts and ends, and live bars; everything KFP
    and the libraries print goes to ``<work_dir>/logs/kadet-run-<time>.log`` (``verbose``: to
    the console too, as it comes)."""
    from kadet.kit.models import offline_env
    from kadet.kubeflow.pipeline import make_pipeline
    from kadet.registry.tracking import close_stale_runs
    from kadet.reporting.console import session
    from kadet.tools.datasets import check_data

    check_data(data)  # before any task starts: a wrong --data fails in one line, not inside KFP
    work = Path(work_dir).resolve()
    (work / "kfp").mkdir(parents=True, exist_ok=True)
    offline_env(tokenizer_threads=True)
    # the run's config, resolved once here; the pipeline's first task reads it as its config_yaml
    # (no profile on top, no parameter that sets a setting) and hands it to every task
    cfg = dataclasses.replace(resolved if resolved is not None else load_config(config, overrides,
                                                                                 base=profile_config(profile)),
                              work_dir=str(work))
    t0 = time.perf_counter()
    started = int(time.time() * 1000)
    earlier = set((work / "kfp").iterdir())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_file = work / "logs" / f"kadet-run-{stamp}.log"
    # kfp.local swaps print (an indenting one) and the root logger's handlers while a task runs and,
    # when tasks overlap, can leave them swapped (handlers on a closed stream): put both back after
    shown, root = builtins.print, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        # the session first: the tasks (in containers too) write their progress to its events file
        with lifeline.parent_exported(), session(log_file, work / "logs" / f"kadet-run-{stamp}.events.jsonl", quiet=not verbose,
                     to_stderr=console_to_stderr), task_runner(runner, image, work, data, caching) as base_image:
            close_stale_runs(cfg)   # what a killed run left RUNNING (its tasks and containers are gone by now)
            make_pipeline(base_image)(**params, data_uri=str(Path(data).resolve()) if "://" not in data else data,
                                      config_yaml=dump_config(cfg), profile="", work_dir=str(work),
                                      generate_shards=shards, label_shards=shards)
    except RuntimeError as exc:
        if "finished with status" not in str(exc):
            raise
        raise KadetError(f"{failure_line(cfg, str(exc), started)}; KFP's output: {log_file}") from None
    finally:
        builtins.print = shown
        root.handlers[:], root.level = handlers, level
    outputs = [d for d in (work / "kfp").iterdir() if d.is_dir() and d not in earlier]
    return {**summarise(cfg, time.perf_counter() - t0, max(outputs, key=lambda d: d.stat().st_mtime, default=None)),
            "log": str(log_file), "runner": runner}


@contextlib.contextmanager
def task_runner(runner: str, image: str | None, work: Path, data: str, caching: bool):
    """``kfp.local`` set up for the run's tasks; yields the component image (None: subprocesses)."""
    from kfp import local

    if runner == "subprocess":
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"),
                   enable_caching=caching, raise_on_error=True)
        yield None
        return
    if runner != "docker":
        raise KadetError(f"--runner {runner!r}: subprocess or docker")
    from kadet.kubeflow import containers

    image = image or containers.DEFAULT_LOCAL_IMAGE
    with containers.docker_api(), containers.task_containers():
        containers.check_image(image)
        for name in containers.stop_orphans(work):
            log.warning("stopped task container %s, left running in %s by a run that was killed", name, work)
        containers.share_work_dir(work)
        local.init(runner=local.DockerRunner(**containers.run_args(work, data)), pipeline_root=str(work / "kfp"),
                   enable_caching=caching, raise_on_error=True)
        umask = os.umask(0o002)   # what this process creates for the tasks stays writable for their user
        try:
            yield image
        finally:
            os.umask(umask)


def failure_line(cfg, kfp_message: str, since_ms: int) -> str:
    """One line for a failed local run: the failed stage, its error and where its full log is
    (from the stage's MLflow run), else the task KFP names."""
    import re

    from kadet.registry import tracking

    task = re.search(r"Inner task failed: \W*'?([\w-]+)", re.sub(r"\x1b\[[0-9;]*m", "", kfp_message))
    task_name = task.group(1) if task else "a task"
    try:
        c = tracking.client(cfg)
        failed = c.search_runs([tracking.experiment_id(cfg)],
                               filter_string=f"attributes.status = 'FAILED' and attributes.start_time >= {since_ms}",
                               order_by=["attributes.start_time DESC"], max_results=20)
    except Exception:  # the tracking store itself may be what failed
        failed = []
    for r in failed:
        error = r.data.tags.get(tracking.ERROR_TAG)
        if error:
            return (f"stage {r.info.run_name} failed: {error} (full log: {r.data.tags.get(tracking.LOG_TAG, '?')})")
    return f"task {task_name} failed before it could record why"


def read_comparison(run_outputs: Path | None) -> Comparison | None:
    """The evaluate task's ``comparison.json`` in this run's task folders (``<pipeline root>/<run>/``),
    typed; None when the run stopped before evaluating (nothing new, nothing to learn)."""
    from kadet.core.layout import file_in

    path = Path(file_in(run_outputs / "evaluate" / "report", "evaluate", "comparison")) if run_outputs else None
    return Comparison.from_json(read_json(path)) if path is not None and path.is_file() else None


def read_preflight(run_outputs: Path | None) -> dict:
    """The pre-flight task's figures (its ``preflight.json``): ``{"base", "teacher", "lead",
    "lead_ci_low", "lead_ci_high"}``; {} when it measured nothing (a silver run)."""
    path = run_outputs / "preflight" / "report" / "preflight.json" if run_outputs else None
    if path is None or not path.is_file():
        return {}
    r = read_json(path)
    return {"base": r["base"], "teacher": r["teacher"], "lead": r["lead"], "lead_ci_low": r["ci_low"],
            "lead_ci_high": r["ci_high"]}


def comparison_summary(comp: Comparison | None, ndcg: str) -> dict:
    """What ``kadet run``'s closing lines say of the evaluation, read from the comparison itself."""
    if comp is None:
        return {"base": {}, "candidate": {}, "gain_ci": None, "eval_kind": None, "gate_retriever": None,
                "retrievers": {}}
    gain = comp.gain(ndcg)
    return {"base": dict(comp.base), "candidate": dict(comp.candidate),
            "gain_ci": [gain["ci_low"], gain["ci_high"]] if gain else None, "eval_kind": comp.kind,
            "gate_retriever": comp.retriever, "retrievers": comp.retrievers} | (
        {"caveat": SILVER_CAVEAT} if comp.kind == "silver" else {})


def work_counts(stages) -> dict[str, dict[str, int]]:
    """Per stage, the work reused from earlier runs and done in this one (report.REUSE_COUNTS)."""
    from kadet.reporting.report import REUSE_COUNTS, stage_counts

    runs = [{"name": n, "metrics": dict(r.data.metrics)} for n, _, r in stages]
    counts = {stage: list(stage_counts(runs, stage, keys).values()) for stage, keys in REUSE_COUNTS.items()}
    return {stage: {"reused": reused, "new": new} for stage, (reused, new) in counts.items()}


def summarise(cfg, seconds: float, run_outputs: Path | None = None) -> dict:
    """The run's outcome: the evaluation from the evaluate task's ``comparison.json`` in
    ``run_outputs`` (this run's task folders), the registry outcome and the stage wall times from
    the run's MLflow runs, which record them."""
    from kadet.registry import tracking
    from kadet.registry.register import alias_version

    c = tracking.client(cfg)
    exp = tracking.experiment_id(cfg)
    parents = c.search_runs([exp], filter_string=f"tags.`{tracking.PIPELINE_TAG}` != ''",
                            order_by=["attributes.start_time DESC"], max_results=50)
    parent = next(r for r in parents if "mlflow.parentRunId" not in r.data.tags)
    of_parent = tracking.filter_equals("tags.`mlflow.parentRunId`", parent.info.run_id)
    children = c.search_runs([exp], filter_string=of_parent, order_by=["attributes.start_time ASC"], max_results=200)
    stages = [(r.info.run_name, ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000.0, r)
              for r in children]
    reg = next((r for n, _, r in stages if n == "register"), None)
    champ = alias_version(c, cfg.register.model_name, cfg.register.champion_alias)
    return {
        "seconds": round(seconds, 1), "parent_run": parent.info.run_id,
        "stages": [(n, round(s, 1)) for n, s, _ in stages],
        **comparison_summary(read_comparison(run_outputs), cfg.evaluation.ndcg),
        "version": reg.data.tags.get(tracking.MODEL_VERSION_TAG) if reg else None,
        # a promotion refused at the last moment (the champion moved meanwhile) is on the parent
        "gate": parent.data.tags.get(tracking.GATE_TAG) or (reg.data.tags.get(tracking.GATE_TAG) if reg else None),
        "champion": champ.version if champ else None,
        "tracking_uri": mask_uri(tracking.tracking_uri(cfg)), "model_name": cfg.register.model_name,
        "metrics": [cfg.evaluation.ndcg, cfg.evaluation.recall],
        # the version trained on this very corpus content and these settings, when nothing was new
        "unchanged_since": parent.data.tags.get(tracking.UNCHANGED_TAG),
        # the pre-flight check's reason to stop: the teacher is not measurably ahead of the base
        "nothing_to_learn": parent.data.tags.get(tracking.NOTHING_TO_LEARN_TAG),
        # the teacher's lead over the base on the judged queries ({} on silver runs): what there was to learn
        "preflight": read_preflight(run_outputs),
        "work": work_counts(stages),
    }
