"""``kadet submit`` and ``kadet schedule`` against a local HTTP double of the KFP v2beta1 API
(tests/kfpdouble.py). No KFP server can run here, so these check the *shape* of the requests
``kfp.Client`` sends, not that a cluster runs them."""

from __future__ import annotations

import pytest
import yaml

from kadet.cli import main
from kadet.errors import KadetError
from pipelines.compile import DEFAULT_OUTPUT
from pipelines.remote import kfp_cron, parse_params
from tests.kfpdouble import kfp_double


def _posts(double, route):
    return [r for r in double.requests if r["method"] == "POST" and r["path"].split("?")[0] == route]


def test_submit_sends_the_compiled_pipeline_with_parameters(capsys):
    with kfp_double() as (host, double):
        assert main(["submit", "--host", host, "--data", "s3://corpora/scifact", "--param", "training_mode=full",
                     "--param", "sample_size=500", "--run-name", "nightly", "--token", "tok"]) == 0
    (run,) = _posts(double, "/apis/v2beta1/runs")
    body = run["body"]
    assert body["display_name"] == "nightly" and body["service_account"] == "kadet-pipeline-runner"
    assert body["runtime_config"]["parameters"] == {"data_uri": "s3://corpora/scifact", "training_mode": "full",
                                                    "sample_size": 500}
    committed = list(yaml.safe_load_all(DEFAULT_OUTPUT.read_text()))
    sent = body["pipeline_spec"]["pipeline_spec"]
    assert sent["pipelineInfo"] == committed[0]["pipelineInfo"]
    assert set(sent["root"]["dag"]["tasks"]) == set(committed[0]["root"]["dag"]["tasks"])
    assert sent["deploymentSpec"] == committed[0]["deploymentSpec"]
    assert body["pipeline_spec"]["platform_spec"] == committed[1]          # GPU, PVC, secrets travel along
    (exp,) = _posts(double, "/apis/v2beta1/experiments")
    assert exp["body"]["display_name"] == "kadet" and body["experiment_id"] in double.experiments
    assert {k.lower(): v for k, v in run["headers"].items()}["authorization"] == "Bearer tok"
    assert "submitted run" in capsys.readouterr().out


def test_schedule_creates_a_recurring_run_without_overlap_or_catch_up():
    with kfp_double() as (host, double):
        assert main(["schedule", "--host", host, "--data", "s3://corpora/scifact", "--cron", "0 3 * * 1",
                     "--name", "weekly", "--no-cache"]) == 0
    (job,) = _posts(double, "/apis/v2beta1/recurringruns")
    body = job["body"]
    assert body["display_name"] == "weekly" and body["mode"] == "ENABLE"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
    assert body["runtime_config"]["parameters"] == {"data_uri": "s3://corpora/scifact"}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kadet"
    assert body["experiment_id"] in double.experiments


def test_cron_and_parameter_errors():
    assert kfp_cron("*/15 * * * *") == "0 */15 * * * *" and kfp_cron("0 0 3 * * 1") == "0 0 3 * * 1"
    with pytest.raises(KadetError, match="expected 5 fields"):
        kfp_cron("0 3 * *")
    with pytest.raises(KadetError, match="expected key=value"):
        parse_params(["training_mode"], "s3://x")
    with pytest.raises(KadetError, match="no data"):
        parse_params([], None)
