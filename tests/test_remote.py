"""``kadet submit`` and ``kadet schedule`` against a local HTTP double of the KFP v2beta1 API
(tests/kfpdouble.py). No KFP server can run here, so these check the *shape* of the requests
``kfp.Client`` sends, not that a cluster runs them."""

from __future__ import annotations

import pytest

from kadet.cli import main
from kadet.errors import KadetError
from pipelines.compile import DEFAULT_OUTPUT
from pipelines.remote import kfp_cron, parse_params
from tests.kfpdouble import kfp_double


def _posts(double, route):
    return [r for r in double.requests if r["method"] == "POST" and r["path"].split("?")[0] == route]


def test_submit_uploads_the_pipeline_version_once_and_runs_it(capsys):
    """Was: an inline pipeline spec per run (no pipeline or version in the UI) and no backend
    check. Now the compiled YAML is uploaded as pipeline ``kadet``, version ``kadet-<sha256[:12]>``,
    once; later submits of the same YAML reuse it."""
    import hashlib

    args = ["submit", "--data", "s3://corpora/scifact", "--param", "training_mode=full", "--param", "sample_size=500",
            "--run-name", "nightly", "--token", "tok"]
    with kfp_double() as (host, double):
        assert main([*args[:1], "--host", host, *args[1:]]) == 0
        assert main([*args[:1], "--host", host, *args[1:]]) == 0          # the same YAML again
    assert len(_posts(double, "/apis/v2beta1/pipelines/upload")) == 1
    (upload,) = _posts(double, "/apis/v2beta1/pipelines/upload_version")
    assert DEFAULT_OUTPUT.read_text() in upload["body"]["upload"]            # the committed YAML, as is
    digest = hashlib.sha256(DEFAULT_OUTPUT.read_bytes()).hexdigest()[:12]
    (version,) = [v for v in double.versions.values() if v["display_name"] == f"kadet-{digest}"]
    runs = _posts(double, "/apis/v2beta1/runs")
    assert len(runs) == 2
    body = runs[0]["body"]
    assert body["pipeline_version_reference"] == {"pipeline_id": version["pipeline_id"],
                                                  "pipeline_version_id": version["pipeline_version_id"]}
    assert body["display_name"] == "nightly" and body["service_account"] == "kadet-pipeline-runner"
    assert body["runtime_config"]["parameters"] == {"data_uri": "s3://corpora/scifact", "training_mode": "full",
                                                    "sample_size": 500}
    assert body["experiment_id"] in double.experiments
    assert {k.lower(): v for k, v in runs[0]["headers"].items()}["authorization"] == "Bearer tok"
    assert any(r["path"] == "/apis/v1beta1/healthz" for r in double.requests)
    assert "submitted run" in capsys.readouterr().out


def test_submit_says_which_backend_it_needs():
    with kfp_double(version="2.3.0") as (host, double):
        with pytest.raises(KadetError, match=r"the KFP backend is 2.3.0; kadet's pipeline needs Kubeflow Pipelines >= 2.14"):
            from pipelines.remote import submit

            submit(host, {"data_uri": "s3://x"})
    assert not _posts(double, "/apis/v2beta1/runs")


def test_schedule_is_idempotent_by_name_and_never_overlaps_or_catches_up():
    with kfp_double() as (host, double):
        args = ["schedule", "--host", host, "--data", "s3://corpora/scifact", "--cron", "0 3 * * 1", "--name", "weekly",
                "--no-cache"]
        assert main(args) == 0 and main(args) == 0                           # the same schedule twice: one job
        assert len(double.recurring) == 1
        (body,) = double.recurring.values()
        assert body["display_name"] == "weekly" and body["mode"] == "ENABLE"
        assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
        assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
        assert body["runtime_config"]["parameters"] == {"data_uri": "s3://corpora/scifact"}
        assert body["pipeline_version_reference"]["pipeline_version_id"] in double.versions
        assert main([*args[:-3], "--cron", "0 4 * * 1", *args[-3:-1], "--no-cache"]) == 0   # a changed schedule
        (changed,) = double.recurring.values()
        assert changed["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * 1" and changed is not body


def test_cron_and_parameter_errors():
    assert kfp_cron("*/15 * * * *") == "0 */15 * * * *" and kfp_cron("0 0 3 * * 1") == "0 0 3 * * 1"
    with pytest.raises(KadetError, match="expected 5 fields"):
        kfp_cron("0 3 * *")
    with pytest.raises(KadetError, match="expected key=value"):
        parse_params(["training_mode"], "s3://x")
    with pytest.raises(KadetError, match="no data"):
        parse_params([], None)
