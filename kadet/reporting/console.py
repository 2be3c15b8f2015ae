"""``kadet run``'s console: one line per stage as it starts and ends, live bars, nothing else.

The stages run as KFP tasks in subprocesses; they report through :mod:`kadet.core.progress` events
(a JSON-lines file named by ``KADET_PROGRESS``). :func:`session` sets that up, sends everything
else written to stdout/stderr (KFP executor dumps, runner and library warnings) to a log file,
and renders the events from a thread:

    prepare        started
    prepare        done  0.4 s   documents 5,183 · passages 5,000
    mine           started
    mine           encode 5,183 texts  42%|████▏     | 21/50 [00:31<00:43,  1.48s/it]
    mine           done  183.7 s   queries 4,515 · candidates 4,515 · dropped 0

Bars are drawn only on a terminal; a pipe or file gets the start and end lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from kadet.core import progress

WIDTH = 14  # stage name column


#: The counts worth a glance, per stage (a stage not named here shows its first few counts).
HEADLINE = {"prepare": ("corpus", "passages"), "generate": ("kept", "failed_this_run", "generated", "reused"),
            "mine": ("queries", "kept"),
            "label": ("scored_now", "pairs_scored", "pairs_reused", "labelled", "train", "dev", "silver"),
            "distill": ("train_queries", "dev_queries", "epochs"), "evaluate": ("queries", "documents")}


def format_counts(counts: Mapping[str, Any], dropped: Mapping[str, Any] | None = None, stage: str = "",
                  limit: int = 4) -> str:
    """``queries 4,515 · kept 4,515 · dropped 12 (round_trip 10, empty 2)``: the stage's
    :data:`HEADLINE` counts (else the first ``limit``) and the drops by reason."""
    numeric = {k: v for k, v in counts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    keys = [k for k in HEADLINE.get(stage.split("-")[0], ()) if k in numeric] or list(numeric)[:limit]
    parts = [f"{k} {numeric[k]:,}" if isinstance(numeric[k], int) else f"{k} {numeric[k]:.4g}" for k in keys]
    lost = {k: v for k, v in (dropped or {}).items() if isinstance(v, (int, float)) and v}
    if lost:
        why = ", ".join(f"{k} {v:,}" for k, v in sorted(lost.items(), key=lambda kv: -kv[1])[:3])
        parts.append(f"dropped {sum(lost.values()):,} ({why})")
    return " · ".join(parts)


class Console:
    """Reads the events file from a thread and writes lines (and bars) to ``out``."""

    def __init__(self, events: Path, out: IO[str], bars: bool | None = None):
        self.events, self.out = events, out
        self.bars = out.isatty() if bars is None else bars
        self._pos = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kadet-console", daemon=True)
        self._counts: dict[str, str] = {}
        self._reused: dict[str, str] = {}
        self._bar = None
        self._bar_key: tuple[str, str] | None = None
        self.failed: list[dict] = []

    def start(self) -> Console:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._drain()
        self._close_bar()

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._drain()

    def _drain(self) -> None:
        if not self.events.exists():
            return
        with open(self.events, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self._pos += end
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                self.handle(json.loads(line))

    def line(self, stage: str, text: str) -> None:
        self._close_bar()
        self.out.write(f"  {stage:<{WIDTH}} {text}\n")
        self.out.flush()

    def handle(self, e: Mapping[str, Any]) -> None:
        stage, kind = str(e.get("stage", "")), e.get("event")
        if kind == "start":
            self.line(stage, "started")
        elif kind == "counts":
            self._counts[stage] = (format_counts(e.get("counts", {}), e.get("dropped", {}), stage)
                                   + self._reused.pop(stage, ""))
        elif kind == "note":     # a line worth a person's eye (e.g. the approximate index mining used)
            self.line(stage, str(e.get("text", "")))
        elif kind == "reused":   # the stage's output was taken from an earlier run (kubeflow/steps.py reusable)
            self._reused[stage] = f" · reused from {e.get('run', '?')}"
        elif kind == "end":
            if e.get("status") == "ok":
                counts = self._counts.get(stage, "")
                self.line(stage, f"done  {e.get('seconds', 0):.1f} s" + (f"   {counts}" if counts else ""))
            else:
                self.failed.append(dict(e))
                self.line(stage, f"FAILED after {e.get('seconds', 0):.1f} s (log: {e.get('log', '?')})")
        elif kind == "progress" and self.bars:
            self._progress(stage, str(e.get("desc", "")), int(e.get("n", 0)), int(e.get("total", 0)))

    def _progress(self, stage: str, desc: str, n: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar_key != (stage, desc):
            self._close_bar()
            self._bar = tqdm(total=total, desc=f"  {stage:<{WIDTH}} {desc}", file=self.out, leave=False, mininterval=0,
                             dynamic_ncols=True)
            self._bar_key = (stage, desc)
        self._bar.update(max(0, n - self._bar.n))

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_key = None, None


@contextlib.contextmanager
def session(log_file: Path, events: Path, quiet: bool = True, to_stderr: bool = False) -> Iterator[Console]:
    """Stage events to ``events`` (``KADET_PROGRESS``) rendered on the terminal (on stderr with
    ``to_stderr``, e.g. when stdout is for JSON); with ``quiet``, file descriptors 1 and 2 (this
    process and its subprocesses) go to ``log_file`` meanwhile."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    events.parent.mkdir(parents=True, exist_ok=True)
    events.write_text("")
    old_env = os.environ.get(progress.ENV)
    os.environ[progress.ENV] = str(events)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)] if quiet else []
    if quiet:
        out = os.fdopen(os.dup(saved[1] if to_stderr else saved[0]), "w", buffering=1)
    else:
        out = sys.stderr if to_stderr else sys.stdout
    console = Console(events, out, bars=None if quiet else False)
    streams = sys.stdout, sys.stderr
    log = open(log_file, "a", encoding="utf-8", buffering=1) if quiet else None
    try:
        if log is not None:
            os.dup2(log.fileno(), 1)          # subprocesses, C libraries
            os.dup2(log.fileno(), 2)
            sys.stdout = sys.stderr = log     # Python code holding no earlier reference to the streams
        console.start()
        yield console
    finally:
        console.stop()
        if log is not None:
            sys.stdout, sys.stderr = streams
            log.close()
        sys.stdout.flush()
        sys.stderr.flush()
        if quiet:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            out.close()
        if old_env is None:
            os.environ.pop(progress.ENV, None)
        else:
            os.environ[progress.ENV] = old_env
