"""Crash-safe writes of JSON and JSONL files.

``write_jsonl`` and ``write_json`` write a whole file atomically: the text goes to a unique
hidden temporary name in the same folder, then is renamed over the target, so a reader sees the
old file or the new one, never half of one, and two writers never share a temporary file.
``append_jsonl`` appends to a log and fsyncs, so a crash loses at most the group in flight
(:mod:`kadet.core.journal` reads such logs back). ``read_text`` and ``decode_line`` are how every
text file is read: bytes that are not UTF-8 are a :class:`~kadet.core.errors.DataError` naming the
file, the line and the column, never a ``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from kadet.core.errors import DataError, KadetError


def _temporary(path: Path) -> Path:
    """A unique hidden temp name in ``path``'s folder: two writers never share it, readers never match it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows as UTF-8 JSONL atomically (temp file + rename); returns the row count."""
    path = Path(path)
    tmp = _temporary(path)
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def write_json(path: str | os.PathLike, obj, indent: int = 2, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON atomically (unique temp name in the same folder + rename)."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def append_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Append records to a JSONL log and fsync, so a crash loses at most the group in flight."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        fh.flush()
        os.fsync(fh.fileno())


def _not_utf8(path: str | os.PathLike, line: bytes, lineno: int, start: int) -> DataError:
    """The one-line error for a line whose byte ``start`` (0-based, in ``line``) is not UTF-8."""
    return DataError(path, f"invalid UTF-8 byte 0x{line[start]:02x} at column {start + 1} (not UTF-8 text; "
                     "save it as UTF-8)", lineno)


def decode_line(raw: bytes, path: str | os.PathLike, lineno: int) -> str:
    """One line of a text file (``lineno``: 1-based) as UTF-8; a :class:`DataError` naming the
    file, line and column of the first byte that is not."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, raw, lineno, exc.start) from None


def read_text(path: str | os.PathLike) -> str:
    """A text file (a config, a profile, a JSON file) as UTF-8; a :class:`DataError` naming the
    file, line and column of the first byte that is not (``FileNotFoundError`` passes through)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        begin = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        line = data[begin : end if end >= 0 else len(data)]
        raise _not_utf8(path, line, data.count(b"\n", 0, exc.start) + 1, exc.start - begin) from None


def read_json(path: str | os.PathLike):
    """A JSON file, read as UTF-8 (:func:`read_text`)."""
    return json.loads(read_text(path))


def json_roundtrip(obj) -> dict:
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons with stored JSON."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def replaceable_folder(target: str | os.PathLike, keep: dict[str, str | os.PathLike]) -> Path:
    """``target`` resolved (``.``, ``..`` and links followed), for a command that deletes and
    replaces it; a ``KadetError`` when it is the filesystem root or is, or holds, one of ``keep``
    (``{what: path}``: the current directory, the work dir, the registry file), which replacing
    it would delete. Build the new folder beside the resolved path, never inside it."""
    target = Path(target).expanduser().resolve()
    if target == Path(target.anchor):
        raise KadetError(f"refusing to replace {target}: it is the filesystem root")
    for what, path in keep.items():
        path = Path(path).expanduser().resolve()
        if path == target or target in path.parents:
            raise KadetError(f"refusing to replace {target}: it {'is' if path == target else 'holds'} {what} "
                             f"({path}); pick an output folder outside it")
    return target
