"""What the registry's tests share: a real ``mlflow server`` and three distinct tiny models, per test module."""

from __future__ import annotations

import pytest

from tests.doubles.data import make_tiny_st
from tests.doubles.mlflowserver import mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three distinct tiny models (different seeds, so different fingerprints)."""
    return [make_tiny_st(tmp_path_factory.mktemp(f"m{i}"), seed=i) for i in range(3)]
