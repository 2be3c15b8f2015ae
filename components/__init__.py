"""Thin KFP lightweight components, one per pipeline step (see :mod:`components.stages`).

    comps = build(image="registry.example.com/kadet:0.1.0-cpu")
    comps.prepare(data_uri=..., ...)

The image is a setting: ``build(image)``, else ``$KADET_IMAGE``, else :data:`DEFAULT_IMAGE`;
the GPU steps of a cluster pipeline use ``$KADET_GPU_IMAGE``, else :data:`DEFAULT_GPU_IMAGE`.
Images have kadet and kfp installed, so components install nothing at start-up.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from kfp import dsl

from components import stages

DEFAULT_IMAGE = "ghcr.io/kadet-ml/kadet:0.1.0-cpu"
DEFAULT_GPU_IMAGE = "ghcr.io/kadet-ml/kadet:0.1.0-cuda"
NAMES = ("fingerprint", "unchanged", "preflight", "nothing_to_learn", "prepare", "generate", "generate_merge", "mine", "label", "label_merge",
         "distill", "evaluate", "register", "promote", "challenger", "finish", "shard_indices")


def image() -> str:
    return os.environ.get("KADET_IMAGE", DEFAULT_IMAGE)


def gpu_image() -> str:
    return os.environ.get("KADET_GPU_IMAGE", DEFAULT_GPU_IMAGE)


def build(base_image: str | None = None) -> SimpleNamespace:
    """Every component, built on ``base_image``."""
    img = base_image or image()
    return SimpleNamespace(**{
        name: dsl.component(getattr(stages, name), base_image=img, install_kfp_package=False)
        for name in NAMES
    })
