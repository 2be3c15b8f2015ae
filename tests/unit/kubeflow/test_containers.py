"""``kadet run --runner docker``'s container arguments, without a container engine (the real runs:
tests/deploy/test_containers.py, marked full)."""

from __future__ import annotations

import os
import stat

import pytest

from kadet.kubeflow import containers


def test_tasks_run_as_the_image_user_on_a_read_only_root_with_only_the_work_dir_and_data_mounted(tmp_path,
                                                                                                    monkeypatch):
    work, data = tmp_path / "work", tmp_path / "data"
    work.mkdir()
    data.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("SOMETHING_ELSE", "x")
    args = containers.run_args(work, str(data))
    assert args["user"] == f"10001:{os.getgid()}" and args["read_only"] is True and "/tmp" in args["tmpfs"]
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in args["mounts"]}
    assert mounts == {str(work): (str(work), False), str(data.resolve()): (str(data.resolve()), True)}
    env = args["environment"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["HOME"] == "/tmp"          # offline; a writable home on tmpfs
    assert env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000" and env["AWS_SECRET_ACCESS_KEY"] == "s3cret"
    assert "SOMETHING_ELSE" not in env                                    # only what a task needs is passed
    assert args["labels"] == {containers.WORK_DIR_LABEL: str(work)} and args["network_mode"] == "host"
    # data on S3 or inside the work dir: nothing more is mounted
    assert len(containers.run_args(work, "s3://kadet/corpus")["mounts"]) == 1
    assert len(containers.run_args(work, str(work / "corpus"))["mounts"]) == 1


def test_the_work_dir_is_shared_with_the_tasks_group(tmp_path):
    work = tmp_path / "work"
    (work / "cache").mkdir(parents=True)
    (work / "cache" / "x.npy").write_bytes(b"1")
    os.chmod(work / "cache", 0o755)
    os.chmod(work / "cache" / "x.npy", 0o644)
    containers.share_work_dir(work)
    mode = (work / "cache").stat().st_mode
    assert mode & stat.S_IWGRP and mode & stat.S_ISGID                    # new files keep the group
    assert (work / "cache" / "x.npy").stat().st_mode & stat.S_IWGRP


def test_kfp_starts_task_containers_through_kadet_only_inside_the_block():
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    with containers.task_containers():
        assert docker_task_handler.run_docker_container is containers.run_task_container
    assert docker_task_handler.run_docker_container is original


def test_a_task_container_is_removed_after_its_status_is_read_even_if_it_failed():
    """Fault injection: a fake docker client (no engine here) whose container exits 3."""
    calls = []

    class Container:
        def logs(self, stream, follow):
            calls.append("logs")
            return iter([b"line\n"])

        def wait(self):
            calls.append("wait")
            return {"StatusCode": 3}

        def remove(self, force):
            calls.append("remove")

    class Client:
        class containers:  # noqa: N801 - docker-py's attribute
            @staticmethod
            def run(**kwargs):
                assert kwargs["detach"] is True and "auto_remove" not in kwargs
                return Container()

    assert containers.run_task_container(Client, "img", ["true"], {}) == 3
    assert calls == ["logs", "wait", "remove"]


def test_no_docker_api_and_no_podman_is_one_line(monkeypatch):
    from kadet.core.errors import KadetError

    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr(containers.Path, "exists", lambda self: False)
    monkeypatch.setattr(containers.shutil, "which", lambda name: None)
    with pytest.raises(KadetError, match="no Docker API .* and no podman; `make -C images local`"):
        with containers.docker_api():
            pass
