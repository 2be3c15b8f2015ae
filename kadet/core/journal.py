"""The resumable log of a sharded stage: finished records, appended as they finish, read back by key.

Generate logs every finished generation in ``generations.jsonl`` (one per shard folder), label
every scored candidate list in ``scores.shard-<i>-of-<n>.jsonl``. Both are a :class:`Journal`:

* records are JSON objects with a ``key``, appended in groups with fsync
  (:func:`kadet.core.io.append_jsonl`), so a crash loses at most the group in flight; a rerun reads
  the finished ones back (:func:`read_log`, the last record of a key wins) and skips them;
* ``<log>.depends.json`` beside the log records the settings and inputs its records hold for.
  :meth:`Journal.resume` starts over when they changed (the old log is moved aside to
  ``<stem>.stale-<time>.jsonl``, never deleted), and :func:`merge_logs` refuses a shard's log written
  for other settings than the merge's.

::

    journal = Journal(out / "generations.jsonl", {"model": "smollm2", "seed": 42})
    done = journal.resume()               # {key: record} of an earlier run for the same settings
    journal.append([{"key": "d1|question|0", ...}])
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from kadet.core.errors import KadetError
from kadet.core.io import append_jsonl, json_roundtrip, read_json, write_json

log = logging.getLogger(__name__)

#: What the sidecar of a log is called: ``<log file name>`` + this.
DEPENDS_SUFFIX = ".depends.json"


class Journal:
    """The append-only log at ``path`` whose records hold only for ``depends`` (a JSON-able dict
    of settings and input fingerprints; none for a log that is only read or copied)."""

    def __init__(self, path: str | os.PathLike, depends: Mapping | None = None):
        self.path = Path(path)
        self.depends = json_roundtrip(depends) if depends is not None else None

    @property
    def depends_file(self) -> Path:
        """``<log>.depends.json``: what the records on disk were written for."""
        return self.path.with_name(self.path.name + DEPENDS_SUFFIX)

    def written_for(self) -> dict | None:
        """The settings the log on disk was written for; None when unknown (no or a broken sidecar)."""
        try:
            return read_json(self.depends_file)
        except (OSError, json.JSONDecodeError):
            return None

    def holds(self) -> bool:
        """Was the log on disk written for this journal's ``depends``?"""
        return self.written_for() == self.depends

    def resume(self) -> dict[str, dict]:
        """The finished records, if the log was written for ``depends``; otherwise start over.

        When the sidecar is missing (a log of an older kadet) or differs, the old log is moved
        aside to ``<stem>.stale-<time>.jsonl`` (kept, never deleted), the change is logged and the
        log starts empty; a new log gets its sidecar before the first record.
        """
        if self.path.exists() and not self.holds():
            self._set_aside()
        if not self.path.exists():
            write_json(self.depends_file, self.depends, sort_keys=True)
        return self.records()

    def _set_aside(self) -> None:
        have, want = self.written_for() or {}, self.depends
        stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        aside = self.path.with_name(f"{self.path.stem}.stale-{stamp}.jsonl")
        changed = sorted(k for k in set(want) | set(have) if have.get(k) != want.get(k))
        log.warning("%s was written for other settings or inputs (%s changed): starting over; "
                    "the old records are kept in %s", self.path, ", ".join(changed) or "unknown", aside.name)
        os.replace(self.path, aside)

    def append(self, records: list[dict]) -> None:
        """Append finished records (each with a ``key``) and fsync."""
        append_jsonl(self.path, records)

    def records(self) -> dict[str, dict]:
        """The log's records by key (:func:`read_log`)."""
        return read_log(self.path)

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the log's records with ``records`` (its sidecar stays)."""
        self.path.unlink(missing_ok=True)
        self.append(list(records))

    def copy_into(self, folder: str | os.PathLike) -> None:
        """Copy the log and its sidecar, those of the two that exist, into ``folder``."""
        import shutil

        for part in (self.path, self.depends_file):
            if part.exists():
                shutil.copyfile(part, Path(folder) / part.name)


def merge_logs(shards: Iterable[Journal], into: dict[str, dict] | None = None, *,
          refuse: Callable[[int, Journal], str], missing_ok: bool = False) -> dict[str, dict]:
    """The records of the shards' logs in one dict (``into``, updated, when given; a later log's
    record of a key replaces an earlier one's). Each log must have been written for its
    journal's ``depends``, else ``KadetError(refuse(index, journal))``; with ``missing_ok`` a log
    that does not exist reads as empty."""
    merged = {} if into is None else into
    for i, shard in enumerate(shards):
        if not (missing_ok and not shard.path.exists()) and not shard.holds():
            raise KadetError(refuse(i, shard))
        merged.update(shard.records())
    return merged


def read_log(path: str | os.PathLike) -> dict[str, dict]:
    """Records of an append-only JSONL log by their ``key``. A torn last line (a crash in the
    middle of a write: no newline at the end) is cut off the file so the next append starts
    clean; any other unreadable line is reported as ``file:line`` and skipped, never deleted
    with the good records after it."""
    path = Path(path)
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    end = 0
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                log.warning("%s:%d: torn last line (interrupted write) cut off", path, lineno)
                break
            end += len(raw)
            try:
                rec = json.loads(raw)
                key = rec["key"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                log.warning("%s:%d: unreadable log record skipped (%s)", path, lineno, exc)
                continue
            done[key] = rec
    if end != path.stat().st_size:
        with open(path, "r+b") as fh:
            fh.truncate(end)
    return done
