"""The images built for real and the whole DAG run inside them (issue: containerized for real).

``make -C images local`` builds the component image and the MLflow server image on this machine
(podman here; images/local.sh). Then the DAG runs on a SciFact slice twice, as processes here and
with every task in the component image (``kadet run --runner docker``), against a real MLflow
server running in the MLflow image with its artifacts on a real S3 server (rclone): the same
registered nDCG@10, the tasks' files owned by uid 10001, a read-only root filesystem, the data
folder untouched.

Marked ``full``: building the images on a fresh machine (~5 min with a debootstrap base) and two
DAG runs would take CI past its 45 minutes. One command runs it: ``bash images/check.sh``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.doubles.data import scifact_slice
from tests.doubles.s3server import ACCESS_KEY, SECRET_KEY, rclone_s3
from tests.doubles.servers import free_port

pytestmark = pytest.mark.full

TINY = """
prepare: {sample_size: 12}
generate: {types: {sentence: 1.0}}
label: {rerank_depth: 10, list_size: 8, min_top_percentile: 0}
distill: {epochs: 2, batch_size: 8, chunk_size: 16, passage_max_len: 128, lr: 3.0e-4, min_teacher_lead: -1.0}
register: {model_name: kadet-containers}
"""


@pytest.fixture(scope="module")
def images():
    """``make -C images local``, for real; its lines (engine, base, torch, each image's size and time)."""
    proc = subprocess.run(["make", "-C", str(REPO / "images"), "local"], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    built = re.findall(r"^built (\S+): (\d+) MB in (\d+) s", proc.stdout, re.M)
    assert [b[0].split(":")[0] for b in built] == ["localhost/kadet", "localhost/kadet-mlflow"], proc.stdout[-2000:]
    print(proc.stderr[-1500:], proc.stdout[-500:])
    return {name: (int(mb), int(s)) for name, mb, s in built}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _mlflow_in_its_image(endpoint: str, name: str):
    """A real ``mlflow server`` in the MLflow image (host network), artifacts on the S3 server."""
    port = free_port()
    subprocess.run(["podman", "run", "-d", "--rm", "--name", name, "--network", "host",
                    "-e", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false", "-e", f"MLFLOW_S3_ENDPOINT_URL={endpoint}",
                    "-e", f"AWS_ACCESS_KEY_ID={ACCESS_KEY}", "-e", f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}",
                    "-e", "AWS_DEFAULT_REGION=us-east-1", "localhost/kadet-mlflow:3.17.2", "server",
                    "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    "--backend-store-uri", "sqlite:////tmp/mlflow.db", "--serve-artifacts",
                    "--artifacts-destination", "s3://mlflow/artifacts"], check=True, capture_output=True)
    uri = f"http://127.0.0.1:{port}"
    import time

    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                if r.status == 200:
                    return uri
        except OSError:
            if time.time() > deadline:
                logs = subprocess.run(["podman", "logs", name], capture_output=True, text=True)
                raise RuntimeError(f"mlflow server in its image did not start: {logs.stderr[-2000:]}")
            time.sleep(1)


def test_the_dag_in_containers_registers_what_the_subprocess_runner_registers(images, tmp_path, monkeypatch):
    import mlflow

    from kadet.kubeflow.containers import DEFAULT_LOCAL_IMAGE, docker_api, run_args
    from kadet.kubeflow.local import run_local

    data = scifact_slice(tmp_path / "data")
    before = _digest(data)
    (tmp_path / "tiny.yaml").write_text(TINY)
    with rclone_s3(tmp_path / "s3", buckets=("mlflow",)) as endpoint:
        for k, v in {"MLFLOW_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                     "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        name = f"kadet-test-mlflow-{os.getpid()}"
        uri = _mlflow_in_its_image(endpoint, name)
        try:
            runs = {}
            for runner in ("subprocess", "docker"):
                work = tmp_path / f"work-{runner}"
                runs[runner] = run_local(str(data), str(work), str(tmp_path / "tiny.yaml"),
                                         [f"tracking.tracking_uri={uri}",
                                          f"register.model_name=kadet-containers-{runner}"], runner=runner)
            c = mlflow.MlflowClient(uri, registry_uri=uri)
            ndcg = {}
            for runner, summary in runs.items():
                assert summary["version"], summary
                mv = c.get_model_version(f"kadet-containers-{runner}", summary["version"])
                ndcg[runner] = float(mv.tags["kadet.ndcg_at_10"])
                assert summary["candidate"]["ndcg@10"] == pytest.approx(ndcg[runner], abs=1e-6)
            print(f"registered nDCG@10: subprocess {ndcg['subprocess']:.4f}, docker {ndcg['docker']:.4f} "
                  f"(base {runs['docker']['base']['ndcg@10']:.4f})")
            assert ndcg["docker"] == pytest.approx(ndcg["subprocess"], abs=1e-4)
            # not vacuous: training moved the model, so equal figures mean the same training
            assert abs(ndcg["docker"] - runs["docker"]["base"]["ndcg@10"]) > 1e-4
        finally:
            subprocess.run(["podman", "rm", "-f", name], capture_output=True)
    # the tasks ran as the image's user: what they wrote in the work dir is uid 10001's
    work = tmp_path / "work-docker"
    written = [p for p in (work / "kfp").rglob("manifest.json")]
    assert written and {p.stat().st_uid for p in written} == {10001}
    assert {p.stat().st_uid for p in (tmp_path / "work-subprocess" / "kfp").rglob("manifest.json")} == {os.getuid()}
    assert _digest(data) == before                       # the data folder was mounted read-only
    # the root filesystem the tasks saw is read-only: the same container arguments refuse a write there
    import docker

    with docker_api():
        client = docker.from_env()
        args = run_args(work, str(data))
        out = client.containers.run(DEFAULT_LOCAL_IMAGE, ["sh", "-c", "id -u; touch /opt/x 2>&1; touch /tmp/ok && "
                                                          f"touch {data}/x 2>&1; touch {work}/ok && echo done"],
                                    remove=True, **args).decode()
        client.close()
    assert out.splitlines()[0] == "10001" and "Read-only file system" in out and out.strip().endswith("done")
    assert out.count("Read-only file system") == 2       # the image's /opt and the data folder
    assert (work / "ok").stat().st_uid == 10001
    shutil.rmtree(tmp_path / "s3", ignore_errors=True)


def test_a_bad_corpus_line_fails_in_one_line_in_a_container_too(images, tmp_path):
    from kadet.core.errors import KadetError
    from kadet.kubeflow.local import run_local

    data = scifact_slice(tmp_path / "data", n_queries=5, n_docs=50)
    with open(data / "corpus.jsonl", "a") as fh:
        fh.write('{"_id": "broken", "text": \n')
    (tmp_path / "tiny.yaml").write_text(TINY)
    with pytest.raises(KadetError) as err:
        run_local(str(data), str(tmp_path / "work"), str(tmp_path / "tiny.yaml"), runner="docker")
    line = str(err.value)
    assert "\n" not in line and "corpus.jsonl:" in line and "failed" in line, line


def test_an_unreachable_mlflow_fails_in_one_line_in_a_container(images, tmp_path, monkeypatch):
    from kadet.core.errors import KadetError
    from kadet.kubeflow.local import run_local

    # MLflow's client retries a refused connection 7 times with backoff (minutes per call); the
    # variable reaches the tasks in their containers (containers.PASSED_ENV), so this fails fast
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    data = scifact_slice(tmp_path / "data", n_queries=5, n_docs=50)
    (tmp_path / "tiny.yaml").write_text(TINY)
    with pytest.raises(KadetError) as err:
        run_local(str(data), str(tmp_path / "work"), str(tmp_path / "tiny.yaml"),
                  [f"tracking.tracking_uri=http://127.0.0.1:{free_port()}"], runner="docker")
    assert "\n" not in str(err.value) and "failed" in str(err.value), str(err.value)


def test_a_run_killed_mid_task_resumes_and_its_orphan_container_is_stopped(images, tmp_path):
    """``kill -9`` of ``kadet run --runner docker`` while distill runs leaves distill's container
    running (it belongs to podman, not to the dead process); the rerun on the same work dir stops
    it, reuses what the stages kept (the teacher's scores) and registers a version."""
    import signal
    import sys
    import time

    import docker

    from kadet.kubeflow.containers import WORK_DIR_LABEL, docker_api
    from kadet.kubeflow.local import run_local

    data = scifact_slice(tmp_path / "data")
    slow = TINY.replace("epochs: 2", "epochs: 30").replace("min_teacher_lead: -1.0", "min_teacher_lead: -1.0, patience: 30")
    (tmp_path / "slow.yaml").write_text(slow)
    work = tmp_path / "work"
    with docker_api():
        proc = subprocess.Popen([sys.executable, "-m", "kadet.cli", "run", "--runner", "docker", "--no-plan", "--data",
                                 str(data), "--work-dir", str(work), "--config", str(tmp_path / "slow.yaml")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ)
        seen = ""
        for line in proc.stdout:
            seen += line
            if re.match(r"^  distill +started", line):
                break
        time.sleep(15)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        client = docker.from_env()
        left = client.containers.list(filters={"label": f"{WORK_DIR_LABEL}={work.resolve()}"})
        client.close()
        assert left, seen                                       # the task outlived the killed run
        (tmp_path / "short.yaml").write_text(TINY)
        summary = run_local(str(data), str(work), str(tmp_path / "short.yaml"), runner="docker")
        client = docker.from_env()
        assert client.containers.list(filters={"label": f"{WORK_DIR_LABEL}={work.resolve()}"}) == []
        client.close()
    assert summary["version"] and summary["work"]["label"]["reused"] > 0, summary["work"]
