"""The same DAG with every task in the component image: ``kadet run --runner docker``.

``kfp.local.DockerRunner`` runs each lightweight component in ``--image`` (default
:data:`DEFAULT_LOCAL_IMAGE`, what ``make -C images local`` builds) the way the cluster runs it:

- as uid 10001 (the image's user; the group is the caller's, so the work dir stays yours), with a
  read-only root filesystem and a tmpfs ``/tmp``; the image's entry point sets umask 002;
- only the work dir (read-write) and a local ``--data`` folder (read-only) mounted, each at its own
  path, so every path in the resolved config means the same inside and out;
- offline (``HF_HUB_OFFLINE``), the default models from inside the image;
- MLflow and S3 reached by address: the host's network, and the endpoint and credential variables
  of the caller's environment (:data:`PASSED_ENV`) handed on.

Each task container carries the work dir as a label: a run killed while a task ran leaves that
container running, and the next run on the work dir (which holds its lock) stops it first
(:func:`stop_orphans`), then resumes from what the stages kept, as without containers.

Docker's API comes from ``$DOCKER_HOST`` or ``/var/run/docker.sock``; else, where podman is
installed, from a ``podman system service`` started for the run (:func:`docker_api`) and stopped
after it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from kadet import __version__
from kadet.core.errors import KadetError

#: The image ``make -C images local`` builds (images/local.sh).
DEFAULT_LOCAL_IMAGE = f"localhost/kadet:{__version__}-cpu"
#: The user the image runs as, here as on the cluster (images/Dockerfile, platform.yaml).
IMAGE_UID = 10001
#: Variables of the caller's environment a task gets too: the console's events file (in the work
#: dir), where MLflow and S3 are, and their keys; the ``kadet run`` the tasks belong to (which owns the
#: MLflow parent run: kadet/core/lifeline.py).
PASSED_ENV = ("KADET_PROGRESS", "KADET_PARENT", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
              "MLFLOW_TRACKING_TOKEN", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "KADET_S3_ENDPOINT", "KADET_TGI_URL")


def run_args(work: Path, data: str | None) -> dict:
    """``kfp.local.DockerRunner``'s container arguments (docker-py ``containers.run`` keywords)."""
    from docker.types import Mount

    mounts = [Mount(target=str(work), source=str(work), type="bind")]
    if data and "://" not in data:
        folder = Path(data).resolve()
        folder = folder if folder.is_dir() else folder.parent
        if not folder.is_relative_to(work):
            mounts.append(Mount(target=str(folder), source=str(folder), type="bind", read_only=True))
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HOME": "/tmp",
           "MPLCONFIGDIR": "/tmp/matplotlib", "PYTHONDONTWRITEBYTECODE": "1",
           **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    return {"user": f"{IMAGE_UID}:{os.getgid()}", "read_only": True, "tmpfs": {"/tmp": "rw,size=2g"},
            "network_mode": "host", "mounts": mounts, "environment": env, "labels": {WORK_DIR_LABEL: str(work)}}


#: The label on every task container: the work dir it writes (how a rerun finds a dead run's tasks).
WORK_DIR_LABEL = "io.kadet.work-dir"


def stop_orphans(work: Path) -> list[str]:
    """Stop the task containers a dead run left writing this work dir (the caller holds the work
    dir's lock, so any still running belong to a run that was killed); returns their names."""
    import docker

    client = docker.from_env()
    try:
        found = client.containers.list(filters={"label": f"{WORK_DIR_LABEL}={work}"})
        for container in found:
            container.stop(timeout=10)
        return [c.name for c in found]
    finally:
        client.close()


def share_work_dir(work: Path) -> None:
    """Let the tasks' user (uid 10001, the caller's group) write the work dir: group-writable, and
    new files keep the group (setgid folders)."""
    for root, dirs, files in os.walk(work):
        for name in [*dirs, "."]:
            path = Path(root) / name
            with contextlib.suppress(PermissionError):
                path.chmod(path.stat().st_mode | 0o2070)
        for name in files:
            path = Path(root) / name
            with contextlib.suppress(PermissionError, FileNotFoundError):
                path.chmod(path.stat().st_mode | 0o060)


@contextlib.contextmanager
def docker_api() -> Iterator[str]:
    """A Docker API for the run: ``$DOCKER_HOST``, ``/var/run/docker.sock``, or podman's,
    served for the run's length; yields its address."""
    if os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists():
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    if not shutil.which("podman"):
        raise KadetError("--runner docker: no Docker API ($DOCKER_HOST, /var/run/docker.sock) and no podman; "
                         "`make -C images local` installs podman and builds the image")
    folder = Path(tempfile.mkdtemp(prefix="kadet-podman-"))
    address = f"unix://{folder / 'docker.sock'}"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", address],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(folder / "docker.sock", service)
        before = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = address
        try:
            yield address
        finally:
            os.environ.pop("DOCKER_HOST") if before is None else os.environ.__setitem__("DOCKER_HOST", before)
    finally:
        service.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            service.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def wait_for_socket(sock: Path, service: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            raise KadetError(f"--runner docker: podman's API service did not start (exit {service.poll()})")
        time.sleep(0.1)


def run_task_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """One task's container, as ``kfp.local``'s Docker runner starts it, but removed only after its
    exit status is read: kfp 2.17.3 asks docker to auto-remove it, and podman's Docker API then
    answers the status request of a task that exits at once (``shard_indices``) with a 500 ("no such
    container") that kfp does not expect, failing the run. Pulls nothing."""
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@contextlib.contextmanager
def task_containers() -> Iterator[None]:
    """``kfp.local.DockerRunner`` starts each task with :func:`run_task_container` while in the block."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_task_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def check_image(image: str) -> None:
    """Refuse a run whose image is not here (kadet pulls nothing)."""
    import docker

    client = docker.from_env()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise KadetError(f"--runner docker: image {image} is not on this machine; build it with "
                         "`make -C images local` or pass --image") from None
    finally:
        client.close()
