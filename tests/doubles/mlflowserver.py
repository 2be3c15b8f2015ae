"""A real MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1 (sqlite backend,
artifacts served through its artifact proxy, ``mlflow-artifacts:/``)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.doubles.servers import free_port, stop, wait_until_ready


@contextmanager
def mlflow_server(root: Path, extra_env: dict[str, str] | None = None, artifacts_destination: str | None = None,
                  host: str = "127.0.0.1", extra_args: tuple[str, ...] = (), entrypoint: Path | None = None):
    """Start ``mlflow server`` with its store under ``root`` (listening on ``host``); yields the
    tracking URI (on 127.0.0.1). ``entrypoint``: a script the server is started through, as an
    image's ENTRYPOINT would (it gets ``server ...`` and finds ``mlflow`` on PATH)."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    exe = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra_env or {}),
           "PATH": f"{exe.parent}:{os.environ.get('PATH', '')}"}
    launcher = ["sh", str(entrypoint)] if entrypoint else [str(exe)]
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [*launcher, "server", "--host", host, "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--serve-artifacts",
         "--artifacts-destination", artifacts_destination or (root / "artifacts").as_uri(), *extra_args],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
            return r.status == 200

    try:
        wait_until_ready(proc, healthy, "mlflow server", 90, lambda: (root / "server.log").read_text()[-2000:])
        yield uri
    finally:
        stop(proc)
        log.close()
