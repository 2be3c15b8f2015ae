"""Stage manifests: what a stage read, what it wrote, and what it dropped and why.

Every stage writes ``manifest.json`` next to its outputs::

    {
      "stage": "evaluate",
      "kadet_version": "0.1.0",
      "created_at": "2026-11-25T23:40:00+00:00",
      "config_hash": "3f2a...",
      "inputs":  {"corpus": {"uri": "...", "fingerprint": "sha256:..."}},
      "outputs": {"metrics": "metrics.json"},
      "counts":  {"queries": 300},
      "dropped": {"empty_text": 2},
      "extra":   {...}
    }

The inputs' digests (:func:`digest`; the key is ``"fingerprint"``, as other runs read it) let a
pipeline cache a stage and tell when an input changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kadet import __version__
from kadet.core.errors import KadetError
from kadet.core.io import read_json, write_json

MANIFEST_NAME = "manifest.json"


def digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's relative names and file hashes: the
    generic content digest (not the corpus fingerprint stage, ``kadet.stages.fingerprint``)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            h.update(digest(f).encode() + b"\n")
    else:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


@dataclass
class Manifest:
    """The record a stage leaves next to its outputs."""

    stage: str
    config_hash: str = ""
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: False while the stage's outputs are partial (e.g. generation requests still failing).
    complete: bool = True
    kadet_version: str = __version__
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def add_input(self, name: str, uri: str | os.PathLike, local: str | os.PathLike | None = None) -> None:
        """Record an input and its content digest, under the key ``fingerprint`` (hashing the local
        copy if given)."""
        target = Path(local if local is not None else uri)
        self.inputs[name] = {"uri": str(uri), "fingerprint": digest(target) if target.exists() else ""}

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` items dropped for ``reason``."""
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def write(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / MANIFEST_NAME
        write_json(path, asdict(self))  # atomic, unique temp name: concurrent writers never share it
        return path

    @classmethod
    def read(cls, out_dir: str | os.PathLike) -> "Manifest":
        data = read_json(Path(out_dir) / MANIFEST_NAME)
        return cls(**data)


def require_complete(input_path: str | os.PathLike) -> None:
    """Refuse to read an upstream output whose folder's manifest says it is partial.

    ``input_path`` is a file a stage reads (``queries.jsonl``, ``candidates.jsonl``, ...); its
    folder's ``manifest.json``, when there is one, must not say ``"complete": false``.
    """
    folder = Path(input_path).parent
    path = folder / MANIFEST_NAME
    if not path.exists():
        return
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise KadetError(f"{path}: unreadable manifest ({exc}); rerun the stage that wrote {folder}") from exc
    if data.get("complete", True) is False:
        raise KadetError(f"{input_path}: partial output: {path} says the {data.get('stage', 'upstream')} stage "
                         f"did not finish (counts {data.get('counts')}); rerun that stage first")
