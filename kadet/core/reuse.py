"""Work that outlives a run: generations and teacher scores keyed by content, and whole stage
outputs keyed by their inputs and settings, reused by later runs.

A scheduled run over a grown corpus should pay only for what is new. Each kind of work keeps a
store under the work dir (on a cluster the cache PVC), one folder per settings digest::

    <work_dir>/store/<kind>/<digest of the settings>/seg-<time>-<random>.jsonl   {"k": key, "v": value}
    <work_dir>/store/<kind>/<digest of the settings>/used.json                   {"run": ..., "time": ...}

Keys are digests of content (a generation's exact prompt, a (query text, passage text) pair),
never ids or addresses, so a changed passage is new work and a renamed one is not. A segment is
written whole under a temporary name and renamed (a crash leaves no half segment) and every
writer writes its own segments, so parallel shards share a store without locks. ``used.json``
says which run read the folder last: ``kadet prune`` (kadet/tools/prune.py) keeps the folders the
newest runs used.

    store = Store.open(work_dir, "teacher", {"member": "dense", "model": ...}, run="job-1")
    have = store.get(keys)          # the values already known (one pass over the segments)
    store.put({key: value, ...})    # one new segment

A deterministic stage's whole output (mine, label's merge, distill, evaluate) is kept the same way,
under ``store/finished-<stage>/<digest of its settings and inputs>/output/`` (:func:`finished`): a
rerun after a killed or failed run, or a scheduled run on unchanged inputs, takes it instead of
doing the stage again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from kadet.core.io import write_json, write_jsonl
from kadet.core.layout import RUN_KEY_ENV


def digest(*parts: str) -> str:
    """A short content key (16 hex characters per part, joined by ``|``)."""
    return "|".join(hashlib.sha1(p.encode("utf-8")).hexdigest()[:16] for p in parts)


class Store:
    def __init__(self, folder: Path):
        self.folder = folder

    @classmethod
    def open(cls, work_dir: str | os.PathLike, kind: str, depends: Mapping, run: str | None = None) -> Store:
        """The store of ``kind`` for the settings ``depends`` (a JSON-able dict), marked as used by
        ``run`` (default: the pipeline run key the stage runs under, ``$KADET_PIPELINE_RUN``)."""
        run = os.environ.get(RUN_KEY_ENV, "") if run is None else run
        key = hashlib.sha256(json.dumps(depends, sort_keys=True, default=str).encode()).hexdigest()[:16]
        folder = Path(work_dir).resolve() / "store" / kind / key
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "depends.json").exists():
            write_json(folder / "depends.json", json.loads(json.dumps(depends, default=str)), sort_keys=True)
        write_json(folder / "used.json", {"run": run, "time": round(time.time(), 1)})
        return cls(folder)

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("seg-*.jsonl"))

    def get(self, keys: Iterable[str]) -> dict:
        """The stored values of ``keys`` (later segments win): one pass over the segments that
        keeps only what was asked for, so memory follows the caller's keys, not the store's
        history (a store grows with every scheduled run). Call it once per batch of work, not
        per item: each call reads every segment."""
        wanted = set(keys)
        found: dict = {}
        if not wanted:
            return found
        for seg in self.segments():
            with open(seg, encoding="utf-8") as f:
                for line in f:
                    # {"k": "<key>", "v": ...}: keys are digests (no quotes), so the key is the
                    # fourth '"'-separated part; only wanted lines are parsed
                    if line.split('"', 4)[3] in wanted:
                        rec = json.loads(line)
                        found[rec["k"]] = rec["v"]
        return found

    def put(self, items: Mapping[str, object]) -> None:
        """Add ``items`` as one new segment (nothing written for none)."""
        if not items:
            return
        escaped = next((k for k in items if json.dumps(k, ensure_ascii=False)[1:-1] != k), None)
        if escaped is not None:   # get() matches keys as written, unescaped: such a key would never be found
            raise ValueError(f"store key {escaped!r} has characters JSON escapes; keys are digests")
        name = f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
        write_jsonl(self.folder / name, ({"k": k, "v": v} for k, v in items.items()))

    def compact(self) -> int:
        """Rewrite all segments as one; returns how many segments were merged."""
        segs = self.segments()
        if len(segs) > 1:   # maintenance: holds every value in memory
            values: dict = {}
            for seg in segs:
                with open(seg, encoding="utf-8") as f:
                    values.update((rec["k"], rec["v"]) for rec in map(json.loads, f))
            name = f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
            write_jsonl(self.folder / name, ({"k": k, "v": v} for k, v in values.items()))
            for s in segs:
                s.unlink()
        return len(segs)


@contextlib.contextmanager
def finished(work_dir: str | os.PathLike, stage: str, depends: Mapping, out: str | os.PathLike) -> Iterator[str]:
    """A stage's whole output ``out``, kept for later runs with the same ``depends`` (its settings and
    the digests of its inputs). Yields the run key of the earlier run whose kept output ``out`` now
    holds, or "" when there is none: then the block does the stage's work into ``out``, and when it
    succeeds ``out`` is kept (copied beside, then renamed into place: a crash keeps nothing half)."""
    store = Store.open(work_dir, f"finished-{stage}", depends)
    kept = store.folder / "output"
    made_by = store.folder / "made_by.json"
    for old in store.folder.glob(".output-*"):   # copies a killed run left half made
        if time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    if (kept / "manifest.json").exists() and made_by.exists():
        shutil.copytree(kept, out, dirs_exist_ok=True)
        yield json.loads(made_by.read_text(encoding="utf-8")).get("run") or "?"
        return
    yield ""
    tmp = store.folder / f".output-{uuid.uuid4().hex[:8]}"
    shutil.copytree(out, tmp)
    try:
        tmp.rename(kept)
    except OSError:             # kept meanwhile by a parallel run (or half a rename ago): theirs stays
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(made_by, {"run": os.environ.get(RUN_KEY_ENV, ""), "time": round(time.time(), 1)})
