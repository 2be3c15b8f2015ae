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
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kadet.core import faults, lifeline, progress
from kadet.core.storage import mask_uri
from kadet.kit.comparison import metric_name  # noqa: F401 - re-exported: kadet/kubeflow/components.py imports it from here
from kadet.core.config import KadetConfig
from kadet.core.layout import KFP_RUN_ENV, RUN_KEY_ENV
from kadet.core.manifest import Manifest

log = logging.getLogger(__name__)

PIPELINE_TAG = "kadet.pipeline_run"
STAGE_TAG = "kadet.stage"
EVAL_DATA_TAG = "kadet.eval_data"
GATE_RETRIEVER_TAG = "kadet.gate_retriever"  # dense or hybrid: what the gate judged (evaluation.retriever)
EVAL_KIND_TAG = "kadet.eval_kind"  # gold (judged queries) or silver (held-out synthetic, teacher-judged)
#: On a failed stage run: the error on one line, and the path of the stage's full log.
ERROR_TAG = "kadet.error"
DENSE_INDEX_TAG = "kadet.dense_index"  # on the mine stage's run: which dense index searched, its recall
LOG_TAG = "kadet.log"
CONFIG_HASH_TAG = "kadet.config_hash"
ARTIFACT_URI_TAG = "kadet.artifact_uri"
#: The gate's outcome ("passed" or the reasons) and the model version, on the register run
#: (and on the parent run if a promotion is refused at the last moment).
GATE_TAG = "kadet.gate"
MODEL_VERSION_TAG = "kadet.model_version"
UNCHANGED_TAG = "kadet.unchanged_since"  # on a parent run that found nothing new (the version it matched)
NOTHING_TO_LEARN_TAG = "kadet.nothing_to_learn"  # on a parent run the pre-flight check stopped (its reason)
KFP_RUN_TAG = "kadet.kfp_run_id"  # on a parent run: the KFP run it belongs to (a cluster run; $KADET_KFP_RUN_ID)
#: The process whose work a run is (kadet/core/lifeline.py ``process_key``): a stage run's task, a
#: parent run's ``kadet run``. A RUNNING run whose process is gone is closed as KILLED (close_stale_runs).
PROCESS_TAG = "kadet.process"
#: On a stage run: the ``kadet run`` its task belongs to (a task in a container cannot be seen from
#: the host, its ``kadet run`` can: once that is gone, the task is too).
RUN_PROCESS_TAG = "kadet.run_process"
DATASET_ATTEMPTS = 3  # tries to log one input as an MLflow dataset (see log_inputs)
#: Config sections logged as params on each stage's run (plus ``data`` and ``retrieval``).
STAGE_SECTIONS = {
    "prepare": ["prepare"], "generate": ["generate"], "mine": ["mine"], "label": ["label"],
    "distill": ["distill"], "evaluate": ["evaluation"], "register": ["register"],
    "preflight": ["label", "distill", "evaluation"], "gate": ["evaluation", "register"],
}


def tracking_uri(cfg: KadetConfig) -> str:
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(cfg.work_dir).resolve() / 'mlflow.db'}"


def _registry_uri(uri: str) -> str | None:
    """The registry of a tracking store: the store itself, a local one or a server, named
    explicitly (left to MLflow's default, a client would follow whatever registry URI the
    process last set); Databricks keeps its own default (its workspace registry)."""
    return None if uri.startswith("databricks") else uri


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




def run_key(pipeline_run: str = "") -> str:
    """The key of the pipeline run a task belongs to: ``pipeline_run``, else ``$KADET_PIPELINE_RUN``."""
    key = pipeline_run or os.environ.get(RUN_KEY_ENV, "")
    if not key:
        from kadet.core.errors import KadetError

        raise KadetError(f"no pipeline run key: pass pipeline_run or set {RUN_KEY_ENV}")
    return key


def filter_equals(key: str, value: str) -> str:
    """The MLflow filter clause that finds ``key`` (``name``, ``tags.`x```) equal to ``value``,
    whatever ``value`` holds. MLflow's filter strings have no escape character: a value is quoted
    with the quote it does not hold; one that holds both is matched with ``LIKE``, each quote and
    ``%`` a one-character wildcard ``_``, which can match more than ``value``: keep only the exact
    matches of what the search returns. Every filter kadet builds from a value goes through here."""
    if "'" not in value:
        return f"{key} = '{value}'"
    if '"' not in value:
        return f'{key} = "{value}"'
    return f"{key} LIKE '" + re.sub(r"['\"%]", "_", value) + "'"


def parent_run_id(cfg: KadetConfig, pipeline_run: str, run_name: str | None = None) -> str:
    """The parent run of ``pipeline_run`` (see :func:`run_key`), created on first use."""
    pipeline_run = run_key(pipeline_run)
    c = client(cfg)
    exp = experiment_id(cfg)
    found = [r for r in c.search_runs([exp], filter_string=filter_equals(f"tags.`{PIPELINE_TAG}`", pipeline_run),
                                      max_results=100, order_by=["attributes.start_time ASC"])
             if r.data.tags.get(PIPELINE_TAG) == pipeline_run]
    kfp_run = os.environ.get(KFP_RUN_ENV, "")
    if found:
        if kfp_run and found[0].data.tags.get(KFP_RUN_TAG) != kfp_run:
            c.set_tag(found[0].info.run_id, KFP_RUN_TAG, kfp_run)
        return found[0].info.run_id
    tags = {PIPELINE_TAG: pipeline_run, PROCESS_TAG: lifeline.owner_key(), **({KFP_RUN_TAG: kfp_run} if kfp_run else {})}
    run = c.create_run(exp, run_name=run_name or f"kadet-{pipeline_run}", tags=tags)
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

    The run ends FINISHED, or FAILED if the block raises (the error is re-raised, and tagged on
    the run: :func:`failure_recorded`). Meanwhile the process's log also goes to the stage's log
    file (:func:`logging_to`) and the console hears of the stage (:func:`progress_reported`).
    With ``cfg.artifact_uri`` set, the step's output folder ``out`` is published when the block
    succeeds (:func:`publish_outputs`).
    """
    import mlflow

    pipeline_run = run_key(pipeline_run)
    name = stage if shard is None else f"{stage}-{shard}"
    run_id = create_stage_run(cfg, stage, name, pipeline_run)
    log_path = stage_log_path(cfg, pipeline_run, name)
    with logging_to(log_path), progress_reported(name, log_path), run_key_exported(pipeline_run):
        with mlflow.start_run(run_id=run_id) as active:
            mlflow.log_params(flat_params(cfg, STAGE_SECTIONS.get(stage, [])))
            mlflow.set_tags({CONFIG_HASH_TAG: cfg.hash(), LOG_TAG: str(log_path)})
            with failure_recorded(name, log_path):
                yield active
                publish_outputs(cfg, out, pipeline_run, name)
    faults.point(f"after:{name}")   # fault injection (tests only): the stage is done, the next not begun


@contextlib.contextmanager
def run_key_exported(pipeline_run: str) -> Iterator[None]:
    """``$KADET_PIPELINE_RUN`` is the run key for the ``with`` block: what the stage's stores
    (kadet/core/reuse.py ``used.json``) record as the run that used them, for ``kadet prune``."""
    before = os.environ.get(RUN_KEY_ENV)
    os.environ[RUN_KEY_ENV] = pipeline_run
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RUN_KEY_ENV, None)
        else:
            os.environ[RUN_KEY_ENV] = before


def create_stage_run(cfg: KadetConfig, stage: str, name: str, pipeline_run: str) -> str:
    """A new run ``name`` nested under the parent run of ``pipeline_run``, on the configured store
    (made the process default: :func:`activate`); returns its id."""
    activate(cfg)
    parent = parent_run_id(cfg, pipeline_run)
    run = client(cfg).create_run(experiment_id(cfg), run_name=name,
                                 tags={"mlflow.parentRunId": parent, PIPELINE_TAG: pipeline_run, STAGE_TAG: stage,
                                       PROCESS_TAG: lifeline.process_key(), RUN_PROCESS_TAG: lifeline.owner_key()})
    return run.info.run_id


def close_stale_runs(cfg: KadetConfig) -> list[str]:
    """Close as KILLED every RUNNING run of the experiment whose process (:data:`PROCESS_TAG`), or the
    ``kadet run`` it belongs to (:data:`RUN_PROCESS_TAG`), is known to be gone: a killed ``kadet
    run`` or task never closed it, and the MLflow UI would show it running forever. Processes this
    machine cannot see (another host, a container) are never judged. Returns the closed runs' ids."""
    c = client(cfg)
    exp = c.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        return []
    closed = []
    for run in c.search_runs([exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        states = {k: lifeline.alive(k) for k in (run.data.tags.get(PROCESS_TAG), run.data.tags.get(RUN_PROCESS_TAG)) if k}
        key = next((k for k, state in states.items() if state is False), None)
        if key is None or True in states.values():   # a live task of a dead run: its own watchdog ends it
            continue
        c.set_tag(run.info.run_id, ERROR_TAG, f"its process (pid {lifeline.key_pid(key)}) ended without closing "
                                             "the run: killed; closed by a later kadet process")
        c.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    if closed:
        log.warning("closed %d MLflow run(s) as KILLED: their kadet process was killed (%s)", len(closed),
                    ", ".join(closed))
    return closed


@contextlib.contextmanager
def logging_to(path: Path) -> Iterator[None]:
    """The root logger also writes to ``path`` (at INFO at least) for the ``with`` block; its
    handlers and level are as they were afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    if level > logging.INFO or level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


@contextlib.contextmanager
def progress_reported(name: str, log_path: Path) -> Iterator[None]:
    """Progress events of stage run ``name`` (:mod:`kadet.core.progress`): ``start``; events within are
    attributed to it (``progress.current_stage``, left set afterwards); ``end`` with the seconds
    and ``ok`` or ``failed``."""
    progress.current_stage = name
    progress.event("start", log=str(log_path))
    t0 = time.perf_counter()
    status = "failed"
    try:
        yield
        status = "ok"
    finally:
        progress.event("end", seconds=round(time.perf_counter() - t0, 1), status=status, log=str(log_path))


@contextlib.contextmanager
def failure_recorded(name: str, log_path: Path) -> Iterator[None]:
    """If the block raises: the traceback to the log, the error on one line as the active run's
    ``kadet.error`` tag (``kadet run`` prints it), the log as its artifact; then re-raised."""
    import mlflow

    try:
        yield
    except BaseException as exc:
        log.error("stage %s failed", name, exc_info=True)
        mlflow.set_tag(ERROR_TAG, one_line(exc))
        with contextlib.suppress(Exception):
            mlflow.log_artifact(str(log_path))
        raise


def publish_outputs(cfg: KadetConfig, out: str | Path | None, pipeline_run: str, name: str) -> None:
    """With ``cfg.artifact_uri``: copy the step's output folder ``out`` to
    ``<artifact_uri>/<pipeline_run>/<run name>/`` and tag the active run with it (``kadet.artifact_uri``)."""
    import mlflow

    if not cfg.artifact_uri or out is None:
        return
    from kadet.core.storage import publish

    uri = f"{cfg.artifact_uri.rstrip('/')}/{pipeline_run}/{name}"
    publish(Path(out), uri)
    mlflow.set_tag(ARTIFACT_URI_TAG, uri)


def stage_log_path(cfg: KadetConfig, pipeline_run: str, name: str) -> Path:
    """Where a stage's full log goes: ``<work_dir>/logs/<pipeline run>/<stage run name>.log``."""
    return Path(cfg.work_dir).resolve() / "logs" / pipeline_run / f"{name}.log"


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line (kadet's own errors without the type), at most ``limit`` chars."""
    from kadet.core.errors import KadetError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, KadetError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def links(cfg: KadetConfig, pipeline_run: str, model_name: str = "", version: str = "") -> dict[str, str]:
    """Where to find a run (and its model version, when given): addresses in the MLflow UI at
    ``tracking.ui_url`` (what a browser opens; on a cluster the tracking URI is an in-cluster
    address), else at an http(s) tracking URI, else the URIs MLflow's clients take."""
    parent = parent_run_id(cfg, pipeline_run)
    uri = tracking_uri(cfg)
    base = mask_uri(cfg.tracking.ui_url or (uri if uri.startswith(("http://", "https://")) else ""))
    if base:
        base = base.rstrip("/")
        out = {"MLflow run": f"{base}/#/experiments/{experiment_id(cfg)}/runs/{parent}"}
        return {**out, "model version": f"{base}/#/models/{model_name}/versions/{version}"} if version else out
    out = {"MLflow run": f"runs:/{parent}"}
    return {**out, **({"model version": f"models:/{model_name}/{version}"} if version else {}), "tracking store": mask_uri(uri)}


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


def note_dense_index(indexes: Mapping[str, Mapping[str, Any]]) -> None:
    """Which dense index each retriever of the mine stage searched (``extra.dense_index`` of its
    manifest) as the run's :data:`DENSE_INDEX_TAG`; where an approximate index was weighed (chosen,
    or calibrated and refused), a console line too. The run report shows the tag."""
    import mlflow

    from kadet.kit.search import describe_index

    if not indexes:
        return
    text = "; ".join(f"{name}: {describe_index(info)}" for name, info in indexes.items())
    mlflow.set_tag(DENSE_INDEX_TAG, text[:5000])
    if any(info.get("kind") == "ivf" or "calibrated" in info for info in indexes.values()):
        progress.event("note", text=text)


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
