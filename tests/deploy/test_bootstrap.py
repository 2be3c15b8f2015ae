"""scripts/bootstrap.sh: the interpreter check and the torch index choice, run through its functions."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bootstrap.sh"
PY = shutil.which("python3.11") or shutil.which("python3")


def _bash(snippet: str, env: dict | None = None, path_first: Path | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "KADET_TORCH_INDEX")} | (env or {})
    if path_first is not None:
        full["PATH"] = f"{path_first}:{full['PATH']}"
    return subprocess.run(["bash", "-c", f"source {SCRIPT}; {snippet}"], capture_output=True, text=True, env=full,
                          timeout=60)


def _fake_python(folder: Path, version: str, name: str = "python3.11") -> Path:
    folder.mkdir(exist_ok=True)
    fake = folder / name
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    return fake


def test_sourcing_runs_nothing():
    proc = _bash("echo sourced")
    assert proc.returncode == 0 and proc.stdout == "sourced\n" and proc.stderr == ""


def test_python_311_passes():
    proc = _bash(f"check_python {PY}")
    if "3.11" not in subprocess.run([PY, "--version"], capture_output=True, text=True).stdout:
        pytest.skip("no Python 3.11 here")
    assert proc.returncode == 0 and proc.stderr == ""


def test_other_python_is_refused_in_one_line(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_python(bin_dir, "3.10")  # python3.11 on PATH that says it is 3.10: found first, then refused
    proc = _bash("py=$(pick_python); check_python $py", path_first=bin_dir)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines() == [
        "bootstrap: kadet needs Python 3.11 (pyproject: >=3.11,<3.12) but python3.11 is Python 3.10; "
        "set PYTHON=/path/to/python3.11"]
    fake = _fake_python(bin_dir, "3.12", "python")
    proc = _bash("check_python $(pick_python)", env={"PYTHON": str(fake)})
    assert proc.returncode == 3 and "is Python 3.12" in proc.stderr
    proc = _bash("pick_python", env={"PYTHON": "no-such-python3.11"})
    assert proc.returncode == 3 and "PYTHON=no-such-python3.11 not found" in proc.stderr


def test_the_whole_script_stops_on_a_wrong_python(tmp_path):
    """Run as CI would (a copy of the script in a repo with no .venv): stops before making one."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "bootstrap.sh")
    fake = _fake_python(tmp_path / "bin", "3.10", "python")
    proc = subprocess.run(["bash", str(repo / "scripts" / "bootstrap.sh")], capture_output=True, text=True,
                          env=os.environ | {"PYTHON": str(fake)}, timeout=60)
    assert proc.returncode == 3 and "needs Python 3.11" in proc.stderr and not (repo / ".venv").exists()


@pytest.mark.parametrize("index", ["http://127.0.0.1:9/whl/cpu", "http://10.255.255.1/whl/cpu",
                                   "https://download.pytorch.org.invalid/whl/cpu"])
def test_unreachable_torch_index_falls_back_quickly(index):
    t0 = time.monotonic()
    proc = _bash(f"torch_index_args {PY}", env={"KADET_TORCH_INDEX": index})
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 0 and proc.stdout.strip() == ""  # nothing: pip's default index
    assert f"{index} is not reachable" in proc.stderr and "default index" in proc.stderr


def test_reachable_torch_index_is_used(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html></html>")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/"
        proc = _bash(f"torch_index_args {PY}", env={"KADET_TORCH_INDEX": url})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0 and proc.stdout.strip() == f"--index-url {url}" and proc.stderr == ""


def test_default_index_is_pytorch_cpu():
    proc = _bash("echo ${KADET_TORCH_INDEX:-$DEFAULT_TORCH_INDEX} $TORCH_VERSION")
    assert proc.stdout.split() == ["https://download.pytorch.org/whl/cpu", "2.13.0"]
