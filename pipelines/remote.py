"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint, once or on a schedule.

    kadet submit   --host https://kfp.example.com --data s3://kadet/corpora/scifact [--param k=v ...]
    kadet schedule --host ... --data ... --cron "0 3 * * 1" [--name kadet-weekly]

Both use ``kfp.Client`` with the committed ``pipelines/kadet_pipeline.yaml`` (or ``--package``).
A recurring run has ``max_concurrency=1`` (a retraining never overlaps the previous one) and
no catch-up (missed intervals are skipped, not replayed). Authentication follows ``kfp.Client``:
``--token``/``$KFP_TOKEN`` (bearer), or the in-cluster service account token.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from kadet.errors import KadetError
from pipelines.compile import DEFAULT_OUTPUT
from pipelines.kadet_pipeline import PIPELINE_NAME

DEFAULT_EXPERIMENT = "kadet"
DEFAULT_SERVICE_ACCOUNT = "kadet-pipeline-runner"


def kfp_cron(expr: str) -> str:
    """KFP's 6-field cron (seconds first) from a standard 5-field one; 6 fields pass through."""
    fields = expr.split()
    if len(fields) == 5:
        return "0 " + " ".join(fields)
    if len(fields) == 6:
        return " ".join(fields)
    raise KadetError(f"--cron {expr!r}: expected 5 fields (min hour day month weekday) or KFP's 6")


def parse_params(items: list[str], data: str | None) -> dict:
    """``key=value`` pipeline parameters (values parsed as YAML scalars), plus ``data_uri``."""
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise KadetError(f"--param {item!r}: expected key=value")
        params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    if data:
        params["data_uri"] = data
    if "data_uri" not in params:
        raise KadetError("no data: pass --data URI (the corpus, as the cluster sees it: s3://...)")
    return params


def client(host: str, namespace: str | None = None, token: str | None = None, cookies: str | None = None):
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token or os.environ.get("KFP_TOKEN"),
                          cookies=cookies)


def _package(package: str | None) -> str:
    path = Path(package) if package else DEFAULT_OUTPUT
    if not path.exists():
        raise KadetError(f"{path}: no compiled pipeline (python -m pipelines.compile)")
    return str(path)


#: The oldest KFP backend that runs the compiled pipeline (``dsl.Collected`` of artifacts).
MIN_BACKEND = (2, 14)


def check_backend(c) -> str:
    """The backend's version; a clear error if it is older than :data:`MIN_BACKEND` or unknown."""
    import re

    try:
        # the v2beta1 healthz carries no version; the v1beta1 one (still served by 2.x) has tag_name
        api = c._healthz_api.api_client
        info = api.call_api("/apis/v1beta1/healthz", "GET", response_type="object", auth_settings=["Bearer"],
                            _return_http_data_only=True, _preload_content=True)
        tag = str((info or {}).get("tag_name") or "")
    except Exception as exc:
        raise KadetError(f"cannot read the KFP backend's version (GET /apis/v2beta1/healthz): {exc}; kadet needs "
                         f"Kubeflow Pipelines >= {'.'.join(map(str, MIN_BACKEND))}") from None
    found = re.match(r"v?(\d+)\.(\d+)", tag)
    if not found or tuple(map(int, found.groups())) < MIN_BACKEND:
        raise KadetError(f"the KFP backend is {tag or 'of unknown version'}; kadet's pipeline needs Kubeflow "
                         f"Pipelines >= {'.'.join(map(str, MIN_BACKEND))} (dsl.Collected of artifacts): upgrade it")
    return tag


def pipeline_version(c, package: str, name: str = PIPELINE_NAME, namespace: str | None = None) -> tuple[str, str, bool]:
    """``(pipeline id, version id, reused)``: the pipeline ``name`` (uploaded if missing) and its
    version named after the package's content (``kadet-<sha256[:12]>``), uploaded only if missing,
    so the UI lists one pipeline with one version per compiled YAML however often it is submitted."""
    import hashlib
    import json

    version = f"{name}-{hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]}"
    pid = c.get_pipeline_id(name)
    if pid is None:
        pid = c.upload_pipeline(package, pipeline_name=name, namespace=namespace,
                                description="kadet: adapt an embedding model to one corpus").pipeline_id
    by_name = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": version}]})
    found = c.list_pipeline_versions(pid, page_size=1, filter=by_name).pipeline_versions or []
    if found:
        return pid, found[0].pipeline_version_id, True
    v = c.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pid)
    return pid, v.pipeline_version_id, False


def submit(host: str, params: dict, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
           package: str | None = None, namespace: str | None = None, service_account: str = DEFAULT_SERVICE_ACCOUNT,
           caching: bool = True, token: str | None = None) -> str:
    """Check the backend, upload (or reuse) the pipeline version, start one run; returns its run id."""
    c = client(host, namespace, token)
    check_backend(c)
    pid, vid, _ = pipeline_version(c, _package(package), namespace=namespace)
    exp = c.create_experiment(experiment, namespace=namespace)
    run = c.run_pipeline(exp.experiment_id, run_name or f"{PIPELINE_NAME} {params.get('data_uri', '')}".strip(),
                         params=params, pipeline_id=pid, version_id=vid, enable_caching=caching,
                         service_account=service_account)
    return run.run_id


def schedule(host: str, params: dict, cron: str, name: str = "kadet-retrain", experiment: str = DEFAULT_EXPERIMENT,
             package: str | None = None, namespace: str | None = None,
             service_account: str = DEFAULT_SERVICE_ACCOUNT, caching: bool = True, token: str | None = None) -> str:
    """Create the recurring run ``name`` (cron, max_concurrency=1, no catch-up) on the uploaded
    pipeline version; idempotent by name: the same schedule again is left as it is, a changed one
    (version, cron, parameters) replaces it. Returns its id."""
    c = client(host, namespace, token)
    check_backend(c)
    pid, vid, _ = pipeline_version(c, _package(package), namespace=namespace)
    exp = c.create_experiment(experiment, namespace=namespace)
    cron6 = kfp_cron(cron)
    for job in c.list_recurring_runs(experiment_id=exp.experiment_id, page_size=100).recurring_runs or []:
        if job.display_name != name:
            continue
        spec = job.pipeline_version_reference
        same = (spec is not None and spec.pipeline_version_id == vid and job.trigger is not None
                and job.trigger.cron_schedule is not None and job.trigger.cron_schedule.cron == cron6
                and (job.runtime_config.parameters if job.runtime_config else {}) == params)
        if same:
            return job.recurring_run_id
        c.delete_recurring_run(job.recurring_run_id)
    job = c.create_recurring_run(
        exp.experiment_id, name, cron_expression=cron6, max_concurrency=1, no_catchup=True, params=params,
        pipeline_id=pid, version_id=vid, enable_caching=caching, service_account=service_account)
    return job.recurring_run_id
