"""Progress of the stages, for whoever runs them: a tqdm bar, or events for ``kadet run``'s console.

A stage reports through :func:`bar` (a progress bar over a known total) and :func:`event`
(stage start/end and its counts, sent by :mod:`kadet.registry.tracking`). Where they go:

* ``KADET_PROGRESS`` set (``kadet run`` sets it for the KFP tasks it runs): one JSON object per
  line appended to that file, throttled to ``EVERY_S`` per bar; :class:`kadet.reporting.console.Console`
  renders them as one line per stage and live bars while the KFP output goes to a log file;
* else a tqdm bar on stderr when the stage's ``progress`` setting is on (pod logs, ``kadet label``).

Event lines: ``{"event": "start"|"end"|"counts"|"progress", "stage": name, "t": unix seconds, ...}``;
``end`` has ``seconds`` and ``status`` (``ok``/``failed``), ``counts`` a ``counts`` mapping, and
``progress`` has ``desc``, ``n``, ``total``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

ENV = "KADET_PROGRESS"
EVERY_S = 0.5

#: The stage run (``mine``, ``label-0-of-2``) events are attributed to; set by ``tracking.stage_run``.
current_stage = ""


def channel() -> str | None:
    return os.environ.get(ENV) or None


def event(kind: str, stage: str | None = None, **fields: Any) -> None:
    """Append one event line to the ``KADET_PROGRESS`` file (nothing without it)."""
    path = channel()
    if not path:
        return
    line = json.dumps({"event": kind, "stage": stage or current_stage, "t": time.time(), **fields}) + "\n"
    # O_APPEND: a line written by one call lands whole even with several writers
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Bar:
    """A bar over ``total`` items: ``update(n)``, iterate, or use as a context manager."""

    def __init__(self, total: int, desc: str, show: bool = True, iterable: Iterable | None = None):
        self.total, self.desc, self.n = int(total), desc, 0
        self.iterable = iterable
        self._last = 0.0
        self._tqdm = None
        if channel():
            self._emit(force=True)
        elif show:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=self.total, desc=desc, leave=False)

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= EVERY_S or self.n >= self.total:
            self._last = now
            event("progress", desc=self.desc, n=self.n, total=self.total)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif channel():
            self._emit()

    def set_postfix(self, **kw: Any) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix(**kw)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif channel():
            self._emit(force=True)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: int | None = None, desc: str = "", show: bool = True, iterable: Iterable | None = None) -> Bar:
    """A :class:`Bar`; with ``iterable`` (and its ``len`` as default total) iterate over it."""
    if total is None:
        total = len(iterable) if iterable is not None else 0  # type: ignore[arg-type]
    return Bar(total, desc, show, iterable)
