"""Distill's checkpoints: ``checkpoints/epoch-N/trainer.pt`` after every epoch (the last two kept),
holding the model, optimizer, schedule, loop state and every random state, so that a rerun resumes
where the last run stopped and ends with the weights an uninterrupted run gives.

A checkpoint records a key (:func:`checkpoint_key`) of what it depends on; one made with other
settings, another start or other labels is not resumed from. Loading accepts tensors and plain
containers only (``weights_only``): a checkpoint from a shared bucket cannot run code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from kadet.core.config import DistillConfig, KadetConfig
from kadet.core.errors import KadetError
from kadet.core.manifest import digest

#: ``distill`` settings that change how a run shows itself, not what it learns: left out of the
#: checkpoint key and of the hyperparameters the model card lists.
NOT_HYPERPARAMETERS = ("progress", "device", "preflight", "min_teacher_lead")   # they shape no model


def hyperparameters(settings: DistillConfig) -> dict:
    """The ``distill`` settings that shape the trained model (all but :data:`NOT_HYPERPARAMETERS`)."""
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_HYPERPARAMETERS}


def checkpoint_key(cfg: KadetConfig, labels_path: str | Path, init_key: str = "") -> str:
    """What a checkpoint depends on: the training settings, base model, start, seed and labels."""
    blob = json.dumps({"distill": hyperparameters(cfg.distill), "model": cfg.retrieval.model, "seed": cfg.seed,
                       "init": init_key, "labels": digest(labels_path)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_dir(out: Path, epoch: int) -> Path:
    return out / "checkpoints" / f"epoch-{epoch}"


def write_checkpoint(out: Path, key: str, trainer: dict, state: dict) -> Path:
    """``checkpoints/epoch-<state["epoch"]>`` (written beside, then renamed into place) holding
    ``trainer``'s state dicts (``model``, ``opt``, ``sched``), the loop ``state`` and the random
    states; older checkpoints but the previous one are removed."""
    path = checkpoint_dir(out, state["epoch"])
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save({"run_key": key,  # the checkpoint key; "run_key" is its name in the file format
                **{name: part.state_dict() for name, part in trainer.items()},
                "state": state, **_random_states()}, tmp / "trainer.pt")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    for old in (out / "checkpoints").glob("epoch-*"):  # keep the last two
        if old.name.endswith(".tmp"):
            continue
        if int(old.name.split("-")[1]) < state["epoch"] - 1:
            shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete ``checkpoints/epoch-N`` under ``out``, if any."""
    ckpts = sorted((p for p in (out / "checkpoints").glob("epoch-*")
                    if not p.name.endswith(".tmp") and (p / "trainer.pt").exists()),
                   key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def read_checkpoint(path: Path, device: str) -> dict:
    """``path/trainer.pt``, refused unless it is tensors and plain containers only."""
    try:
        return torch.load(path / "trainer.pt", map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise KadetError(f"{path / 'trainer.pt'}: not a plain kadet checkpoint, refusing to load it "
                         f"({str(exc).splitlines()[0]}); delete the checkpoints folder to start over") from None


def restore(blob: dict, trainer: dict) -> dict:
    """Load a checkpoint's state dicts into ``trainer``'s parts and restore the random states;
    returns the loop state."""
    for name, part in trainer.items():
        part.load_state_dict(blob[name])
    torch.set_rng_state(blob["rng"])
    random.setstate(blob["py_rng"])
    np.random.set_state(_np_state_from_safe(blob["np_rng"]))
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    return blob["state"]


def _random_states() -> dict:
    return {"rng": torch.get_rng_state(), "py_rng": random.getstate(),
            "np_rng": _np_state_to_safe(np.random.get_state()),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _np_state_to_safe(state: tuple) -> tuple:
    """NumPy's legacy RNG state with its key array as a tensor (``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = state
    return (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))


def _np_state_from_safe(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached)
