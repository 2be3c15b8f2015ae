"""Error types that tell the user exactly which file, line and field is wrong."""

from __future__ import annotations


class KadetError(Exception):
    """Base class for every error kadet raises on purpose."""


class ConfigError(KadetError):
    """A configuration value is unknown, missing or of the wrong type."""


class DataError(KadetError):
    """Bad input data.

    The message always starts with ``file:line`` (line is 1-based; for Parquet it is the
    1-based row number) and names the offending field when there is one, e.g.::

        corpus.jsonl:17: field '_id': duplicate id '42' (first seen on line 3)
    """

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")
