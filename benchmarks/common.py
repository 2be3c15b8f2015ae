"""What the benchmarks share that tests do not: the machine a row was measured on, timing, and
the repository root.

The offline environment (:func:`kadet.kit.models.offline_env`) and where the shared BEIR data
lives (:func:`kadet.tools.datasets.find_shared_data`, :func:`~kadet.tools.datasets.find_scifact`)
are the library's; the test data (tiny BEIR folders, SciFact slices, a tiny model) and the
headless browser are tests/doubles/ (``tests.doubles.data``, ``tests.doubles.browser``), which
benchmarks import: tests never import benchmarks.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    """The machine a benchmark row was measured on."""
    return f"{platform.node()} {os.cpu_count()} cpu"


def timed(seconds: dict[str, float], stage: str, fn, *args):
    """``fn(*args)``, its wall seconds recorded as ``seconds[stage]``."""
    t0 = time.perf_counter()
    result = fn(*args)
    seconds[stage] = round(time.perf_counter() - t0, 1)
    return result
