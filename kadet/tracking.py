"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

Each stage runs in its own process (a KFP component), so runs are joined by a tag rather than
by an active-run stack: the parent run is found (or created) by ``kadet.pipeline_run`` = the
pipeline run's id, and every stage creates a child run with ``mlflow.parentRunId`` set to it,
which the MLflow UI shows nested::

    with stage_run(cfg, "mine", pipeline_run="run-42") as run:
        m = mine(cfg, ...)
        log_manifest(m, out_dir)

The tracking URI is ``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a sqlite
store in ``<work_dir>/mlflow.db`` with artifacts in ``<work_dir>/mlartifacts`` (the local
default; a cluster sets the env var to its tracking server).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kadet import progress
from kadet.config import KadetConfig
from kadet.manifest import Manifest

log = logging.getLogger(__name__)

PIPELINE_TAG = "kadet.pipeline_run"
STAGE_TAG = "kadet.stage"
EVAL_DATA_TAG = "kadet.eval_data"
GATE_RETRIEVER_TAG = "kadet.gate_retriever"  # dense or hybrid: what the gate judged (evaluation.retriever)
EVAL_KIND_TAG = "kadet.eval_kind"  # gold (judged queries) or silver (held-out synthetic, teacher-judged)
#: On a failed stage run: the error on one line, and the path of the stage's full log.
ERROR_TAG = "kadet.error"
LOG_TAG = "kadet.log"
CONFIG_HASH_TAG = "kadet.config_hash"
ARTIFACT_URI_TAG = "kadet.artifact_uri"
#: The gate's outcome ("passed" or the reasons) and the model version, on the register run
#: (and on the parent run if a promotion is refused at the last moment).
GATE_TAG = "kadet.gate"
MODEL_VERSION_TAG = "kadet.model_version"
UNCHANGED_TAG = "kadet.unchanged_since"  # on a parent run that found nothing new (the version it matched)
DATASET_ATTEMPTS = 3  # tries to log one input as an MLflow dataset (see log_inputs)
#: Config sections logged as params on each stage's run (plus ``data`` and ``retrieval``).
STAGE_SECTIONS = {
    "prepare": ["prepare"], "generate": ["generate"], "mine": ["mine"], "label": ["label"],
    "distill": ["distill"], "evaluate": ["evaluation"], "register": ["register"],
}


def metric_name(name: str) -> str:
    """An MLflow-legal name for a kadet metric: ``ndcg@10`` -> ``ndcg_at_10``."""
    return name.replace("@", "_at_")


def tracking_uri(cfg: KadetConfig) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.work_dir).resolve() / 'mlflow.db'}"


def _registry_uri(uri: str) -> str | None:
    """A local store is its own registry; a server's registry is the server (MLflow's default)."""
    return uri if uri.startswith("sqlite:") or "://" not in uri else None


def client(cfg: KadetConfig):
    """An ``MlflowClient`` on the configured store; the process-wide MLflow URIs are left alone."""
    import mlflow

    uri = tracking_uri(cfg)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=_registry_uri(uri))


def activate(cfg: KadetConfig) -> None:
    """Make the configured store the process default, for MLflow's fluent API (``mlflow.log_*``,
    ``log_model``, ``register_model``): what a stage run (:func:`stage_run`) needs."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    if _registry_uri(uri):
        mlflow.set_registry_uri(uri)


def experiment_id(cfg: KadetConfig) -> str:
    """The configured experiment, created if missing (local stores keep artifacts in work_dir)."""
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri(cfg).startswith("sqlite:"):
        location = (Path(cfg.work_dir).resolve() / "mlartifacts").as_uri()
    try:
        return c.create_experiment(cfg.tracking.experiment, artifact_location=location)
    except Exception:  # created meanwhile by a parallel stage
        exp = c.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


#: Where a task finds its pipeline run's key when it is not passed in (on a cluster: the Argo
#: workflow's name, from the pod's labels, so the key is not an input and KFP's cache can hit).
RUN_KEY_ENV = "KADET_PIPELINE_RUN"


def run_key(pipeline_run: str = "") -> str:
    """The key of the pipeline run a task belongs to: ``pipeline_run``, else ``$KADET_PIPELINE_RUN``."""
    key = pipeline_run or os.environ.get(RUN_KEY_ENV, "")
    if not key:
        from kadet.errors import KadetError

        raise KadetError(f"no pipeline run key: pass pipeline_run or set {RUN_KEY_ENV}")
    return key


def parent_run_id(cfg: KadetConfig, pipeline_run: str, run_name: str | None = None) -> str:
    """The parent run of ``pipeline_run`` (see :func:`run_key`), created on first use."""
    pipeline_run = run_key(pipeline_run)
    c = client(cfg)
    exp = experiment_id(cfg)
    found = c.search_runs([exp], filter_string=f"tags.`{PIPELINE_TAG}` = '{pipeline_run}'", max_results=1,
                          order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    run = c.create_run(exp, run_name=run_name or f"kadet-{pipeline_run}", tags={PIPELINE_TAG: pipeline_run})
    return run.info.run_id


def flat_params(cfg: KadetConfig, sections: list[str]) -> dict[str, str]:
    d = cfg.to_dict()
    out: dict[str, str] = {}
    for sec in ["data", "retrieval", *sections]:
        for k, v in d.get(sec, {}).items():
            out[f"{sec}.{k}"] = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return out


@contextlib.contextmanager
def stage_run(cfg: KadetConfig, stage: str, pipeline_run: str, shard: str | None = None,
              out: str | Path | None = None) -> Iterator[Any]:
    """A child run of the pipeline's parent run, active for the ``with`` block.

    The run ends FINISHED, or FAILED if the block raises (the error is re-raised). With
    ``cfg.artifact_uri`` set, the step's output folder ``out`` is published to
    ``<artifact_uri>/<pipeline_run>/<run name>/`` when the block succeeds (tag ``kadet.artifact_uri``).
    """
    import mlflow

    pipeline_run = run_key(pipeline_run)
    activate(cfg)
    c = client(cfg)
    parent = parent_run_id(cfg, pipeline_run)
    name = stage if shard is None else f"{stage}-{shard}"
    run = c.create_run(experiment_id(cfg), run_name=name,
                       tags={"mlflow.parentRunId": parent, PIPELINE_TAG: pipeline_run, STAGE_TAG: stage})
    log_path = stage_log_path(cfg, pipeline_run, name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    if level > logging.INFO or level == logging.NOTSET:
        root.setLevel(logging.INFO)
    progress.current_stage = name
    progress.event("start", log=str(log_path))
    t0 = time.perf_counter()
    status = "failed"
    try:
        with mlflow.start_run(run_id=run.info.run_id) as active:
            mlflow.log_params(flat_params(cfg, STAGE_SECTIONS.get(stage, [])))
            mlflow.set_tags({CONFIG_HASH_TAG: cfg.hash(), LOG_TAG: str(log_path)})
            try:
                yield active
                if cfg.artifact_uri and out is not None:
                    from kadet.storage import publish

                    uri = f"{cfg.artifact_uri.rstrip('/')}/{pipeline_run}/{name}"
                    publish(Path(out), uri)
                    mlflow.set_tag(ARTIFACT_URI_TAG, uri)
                status = "ok"
            except BaseException as exc:
                # one line for whoever looks at the run (``kadet run`` prints it), the traceback in the log
                log.error("stage %s failed", name, exc_info=True)
                mlflow.set_tag(ERROR_TAG, one_line(exc))
                with contextlib.suppress(Exception):
                    mlflow.log_artifact(str(log_path))
                raise
    finally:
        progress.event("end", seconds=round(time.perf_counter() - t0, 1), status=status, log=str(log_path))
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def stage_log_path(cfg: KadetConfig, pipeline_run: str, name: str) -> Path:
    """Where a stage's full log goes: ``<work_dir>/logs/<pipeline run>/<stage run name>.log``."""
    return Path(cfg.work_dir).resolve() / "logs" / pipeline_run / f"{name}.log"


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line (kadet's own errors without the type), at most ``limit`` chars."""
    from kadet.errors import KadetError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, KadetError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def links(cfg: KadetConfig, pipeline_run: str, model_name: str, version: str) -> dict[str, str]:
    """Where to find a run and its model version: MLflow UI addresses for an http(s) tracking
    server, else the URIs MLflow's clients take."""
    parent = parent_run_id(cfg, pipeline_run)
    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        return {"MLflow run": f"{base}/#/experiments/{experiment_id(cfg)}/runs/{parent}",
                "model version": f"{base}/#/models/{model_name}/versions/{version}"}
    return {"MLflow run": f"runs:/{parent}", "model version": f"models:/{model_name}/{version}",
            "tracking store": uri}


def finish_parent(cfg: KadetConfig, pipeline_run: str, status: str = "FINISHED") -> None:
    client(cfg).set_terminated(parent_run_id(cfg, pipeline_run), status=status)


def log_manifest(m: Manifest, out_dir: str | Path | None = None) -> None:
    """Counts and drops as metrics, input files as dataset lineage, the manifest as artifact."""
    import mlflow

    metrics = {f"count.{k}": float(v) for k, v in m.counts.items() if isinstance(v, (int, float))}
    metrics.update({f"dropped.{k}": float(v) for k, v in m.dropped.items()})
    if metrics:
        mlflow.log_metrics(metrics)
    progress.event("counts", counts=m.counts, dropped=m.dropped)
    log_inputs(m.inputs)
    if out_dir is not None and (Path(out_dir) / "manifest.json").exists():
        mlflow.log_artifact(str(Path(out_dir) / "manifest.json"))


def log_inputs(inputs: Mapping[str, Mapping[str, str]]) -> None:
    """Each input file as an MLflow dataset (name, source URI, content digest)."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    for name, info in inputs.items():
        uri = str(info.get("uri", ""))
        if not uri:
            continue
        try:
            source = resolve_dataset_source(uri if "://" in uri else Path(uri).resolve().as_uri())
        except Exception as exc:  # an unknown scheme: lineage is best effort, never fatal
            log.warning("no MLflow dataset source for %s: %s", uri, exc)
            continue
        digest = str(info.get("fingerprint", "")).removeprefix("sha256:")[:16] or None
        dataset = MetaDataset(source=source, name=name, digest=digest)
        # parallel shards log the same input at once; the tracking server creates a dataset by
        # get-or-insert, so one of two racing inserts fails on its unique key. The retry finds the row
        # the other one wrote. Lineage stays best effort: a server that still refuses never fails a stage.
        for attempt in range(DATASET_ATTEMPTS):
            try:
                mlflow.log_input(dataset, context=name)
                break
            except Exception as exc:
                if attempt + 1 == DATASET_ATTEMPTS:
                    log.warning("input %s not logged as an MLflow dataset: %s", name, one_line(exc))
                else:
                    time.sleep(0.2 * (attempt + 1))


def plot_curves(curves: Mapping[str, list], path: str | Path) -> Path:
    """Training loss per step and dev loss per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(curves.get("step", []), curves.get("train_loss", []), lw=1)
    ax[0].set(xlabel="optimizer step", ylabel="train loss", title="training loss")
    ax[1].plot(curves.get("epoch", []), curves.get("dev_loss", []), marker="o", label="dev")
    if curves.get("epoch_train_loss"):
        ax[1].plot(curves["epoch"], curves["epoch_train_loss"], marker=".", label="train")
    ax[1].set(xlabel="epoch", ylabel="loss", title="loss per epoch")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_by_type(table: Mapping[str, Mapping[str, float]], path: str | Path, metric: str) -> Path:
    """Grouped bars: ``table[type][system]`` (e.g. base vs candidate nDCG@10 per query type)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    types = list(table)
    systems = sorted({s for row in table.values() for s in row})
    x = np.arange(len(types))
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(types)), 3.5))
    for i, s in enumerate(systems):
        ax.bar(x + i * width, [table[t].get(s, 0.0) for t in types], width, label=s)
    ax.set_xticks(x + width * (len(systems) - 1) / 2, types)
    ax.set(ylabel=metric, title=f"{metric} by query type (synthetic dev queries)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
