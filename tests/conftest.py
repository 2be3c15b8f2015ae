"""Shared fixtures for tests/unit, tests/system and tests/deploy: where the real SciFact data lives,
tiny corpora built on the fly. The test data itself is built by tests/doubles/data.py; the offline
environment and the shared data's location are the library's (benchmarks/ use the same)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kadet.kit.models import offline_env

offline_env()   # before anything imports huggingface_hub

REPO = Path(__file__).resolve().parents[1]

from kadet.tools.datasets import find_scifact  # noqa: E402
from tests.doubles.data import make_tiny_st, write_beir  # noqa: E402


@pytest.fixture(autouse=True)
def _own_work_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in its own current folder: a stage run with the default ``work_dir`` (.kadet)
    keeps its store (kadet/core/reuse.py) there, never in the repository, never shared by tests."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def scifact() -> Path:
    try:
        return find_scifact()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def tiny_beir(tmp_path: Path) -> Path:
    docs = [
        {"_id": "d1", "title": "Aspirin", "text": "Aspirin reduces the risk of heart attack in adults."},
        {"_id": "d2", "title": "Vitamin D", "text": "Vitamin D deficiency is linked to bone fractures."},
        {"_id": "d3", "title": "Sleep", "text": "Short sleep raises the risk of obesity in children."},
        {"_id": "d4", "title": "Coffee", "text": "Coffee consumption is associated with lower liver disease."},
    ]
    queries = [
        {"_id": "q1", "text": "does aspirin prevent heart attacks"},
        {"_id": "q2", "text": "vitamin d and fractures"},
        {"_id": "q3", "text": "sleep duration and childhood obesity"},
    ]
    qrels = [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d3", 1)]
    return write_beir(tmp_path / "tiny", docs, queries, qrels)


@pytest.fixture(scope="session")
def shared_work(tmp_path_factory) -> Path:
    """One work dir for the SciFact tests, so the embedding cache encodes the corpus once."""
    return tmp_path_factory.mktemp("scifact-work")


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory) -> Path:
    return make_tiny_st(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(autouse=True)
def _mlflow_uris_do_not_leak():
    """``mlflow.set_tracking_uri`` also writes ``$MLFLOW_TRACKING_URI``, which the pipeline's task
    subprocesses of a later test would inherit (pointing at a server that is gone): undo it."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {n: os.environ.get(n) for n in names}
    yield
    for n, value in saved.items():
        if value is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = value
    import sys

    if "mlflow" in sys.modules:
        import mlflow.tracking._model_registry.utils as registry_utils
        import mlflow.tracking._tracking_service.utils as tracking_utils

        tracking_utils._tracking_uri = None
        registry_utils._registry_uri = None


@pytest.fixture(autouse=True)
def _print_is_print():
    """A test that runs KFP's local runner in this process may end with ``builtins.print`` (or the
    root logger's handlers) still swapped by kfp.local; kadet.kubeflow.local restores both, this
    keeps any other path from leaking into later tests."""
    import builtins
    import logging

    original, root = builtins.print, logging.getLogger()
    handlers = root.handlers[:]
    yield
    builtins.print = original
    root.handlers[:] = handlers   # nor a handler left on a stream that test closed
