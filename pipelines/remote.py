"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint, once or on a schedule.

    kadet submit   --host https://kfp.example.com --data s3://corpora/scifact [--param k=v ...]
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


def submit(host: str, params: dict, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
           package: str | None = None, namespace: str | None = None, service_account: str = DEFAULT_SERVICE_ACCOUNT,
           caching: bool = True, token: str | None = None) -> str:
    """Start one run; returns its run id."""
    c = client(host, namespace, token)
    result = c.create_run_from_pipeline_package(
        _package(package), arguments=params, run_name=run_name, experiment_name=experiment, namespace=namespace,
        enable_caching=caching, service_account=service_account)
    return result.run_id


def schedule(host: str, params: dict, cron: str, name: str = "kadet-retrain", experiment: str = DEFAULT_EXPERIMENT,
             package: str | None = None, namespace: str | None = None,
             service_account: str = DEFAULT_SERVICE_ACCOUNT, caching: bool = True, token: str | None = None) -> str:
    """Create a recurring run (cron, max_concurrency=1, no catch-up); returns its id."""
    c = client(host, namespace, token)
    exp = c.create_experiment(experiment, namespace=namespace)
    job = c.create_recurring_run(
        exp.experiment_id, name, cron_expression=kfp_cron(cron), max_concurrency=1, no_catchup=True,
        params=params, pipeline_package_path=_package(package), enable_caching=caching,
        service_account=service_account)
    return job.recurring_run_id
