"""``kadet promote`` against a remote MLflow with auth (the issue: "Works against a remote MLflow
with auth"): a real ``mlflow server --app-name=basic-auth`` on 127.0.0.1, started through the
image's entry point (images/mlflow-entrypoint.sh writes the auth ini from MLFLOW_AUTH_*), the
credentials only in the environment (MLFLOW_TRACKING_USERNAME/PASSWORD), as a person has them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kadet.registry import tracking
from kadet.registry.register import FAILURE_TAG, alias_version
from tests.doubles.mlflowserver import mlflow_server
from tests.unit.registry.test_promotion import cli, config, evaluated, prepared, run_once

REPO = Path(__file__).resolve().parents[3]
USER, PASSWORD = "alice", "alice-Secret-never-printed-7"


def create_user(uri: str, name: str, password: str) -> None:
    """The admin makes a user (MLflow's auth REST API; its Python client imports the whole server)."""
    import base64
    import json
    import urllib.request

    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    req = urllib.request.Request(f"{uri}/api/2.0/mlflow/users/create", method="POST",
                                 data=json.dumps({"username": name, "password": password}).encode(),
                                 headers={"Authorization": f"Basic {basic}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """An MLflow server with basic auth: anonymous API calls get 401; ``alice`` is its admin."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    secrets = {"MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{root / 'auth.db'}",
               "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth" / "basic_auth.ini"),
               "MLFLOW_AUTH_DEFAULT_PERMISSION": "READ", "MLFLOW_AUTH_ADMIN_USERNAME": USER,
               "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-Secret-000"}
    with mlflow_server(root / "srv", extra_env=secrets, extra_args=("--app-name=basic-auth",),
                       entrypoint=REPO / "images" / "mlflow-entrypoint.sh") as uri:
        yield uri


def test_kadet_promote_against_mlflow_with_basic_auth(auth_server, models, tmp_path, tiny_beir, monkeypatch, capsys):
    """With the credentials in the environment the alias moves and the record is on the version;
    without them, or with a wrong password, ``kadet promote`` fails with one line (exit 2, no
    traceback) and moves nothing; the password is never printed, nor a URI that holds it."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    name = "with-auth"
    cfg = config(auth_server, tmp_path, name, tiny_beir)
    # one silver version: registered (as the register step does, credentials in the environment), never promoted
    run_once(cfg, models[0], evaluated(tmp_path / "silver", "silver"), prepared(cfg, tmp_path / "prep"), "auth-1")
    c = tracking.client(cfg)
    assert alias_version(c, name, "champion") is None and FAILURE_TAG in c.get_model_version(name, "1").tags
    capsys.readouterr()
    printed = []

    def promote(version, uri=auth_server, *more):
        code, out, err = cli(["promote", "--version", version, "--reason", "better on our support queries",
                              "--data", str(tiny_beir), "--set", f"tracking.tracking_uri={uri}",
                              "--work-dir", str(cfg.work_dir), "--model-name", name,
                              "--set", "register.promote_settle_s=0", *more], capsys)
        printed.append(out + err)
        return code, out, err

    def one_line_error(code, err, *says):
        assert code == 2, err
        assert err.startswith("kadet: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert all(s in err for s in says), err
        with monkeypatch.context() as admin:  # MLflow reads the credentials from the environment per request
            admin.setenv("MLFLOW_TRACKING_USERNAME", USER)
            admin.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
            assert alias_version(c, name, "champion") is None
            assert "kadet.manual.by" not in c.get_model_version(name, "1").tags

    # no credentials: MLflow answers 401; one line, exit 2, nothing moved or recorded
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    code, out, err = promote("1")
    one_line_error(code, err, "HTTP 401", "no credentials", "MLFLOW_TRACKING_USERNAME", auth_server)
    # a wrong password: the same, and the password tried is not echoed
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong-Secret-4242")
    code, out, err = promote("1")
    one_line_error(code, err, "HTTP 401", f"MLFLOW_TRACKING_USERNAME='{USER}' were refused")
    assert "wrong-Secret-4242" not in out + err
    # a user who may read but not write (the server's default permission, READ): 403, one line
    create_user(auth_server, "bob", "bob-Secret-5151")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "bob-Secret-5151")
    code, out, err = promote("1")
    one_line_error(code, err, "HTTP 403", "refused bob", "EDIT")
    assert "bob-Secret-5151" not in out + err

    # the credentials in the environment: the alias moves, the record is on the version
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    code, out, err = promote("1")
    assert code == 0, err
    assert f"kadet promote: {name} v1 is now the champion (was none)" in out and f"by {USER} at " in out
    assert str(alias_version(c, name, "champion").version) == "1" and alias_version(c, name, "challenger") is None
    mv = c.get_model_version(name, "1")
    assert mv.tags["kadet.manual.by"] == USER and mv.tags["kadet.manual.reason"] == "better on our support queries"
    assert mv.tags["kadet.gate"] == "promoted by hand" and FAILURE_TAG not in mv.tags

    # credentials in the tracking URI itself (user:password@host) are never printed back either
    with monkeypatch.context() as bare:
        bare.delenv("MLFLOW_TRACKING_USERNAME")
        bare.delenv("MLFLOW_TRACKING_PASSWORD")
        in_uri = auth_server.replace("http://", f"http://{USER}:{PASSWORD}@")
        code, out, err = promote("1", in_uri, "--by", "carol")
    assert code == 0 and "v1 already was the champion" in out, err
    assert c.get_model_version(name, "1").tags["kadet.manual.by"] == "carol"
    assert all(PASSWORD not in p for p in printed), printed
