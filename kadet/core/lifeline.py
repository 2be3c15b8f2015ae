"""A task process ends with the ``kadet run`` that started it, and nothing outlives a kill.

``kadet run`` (kadet/kubeflow/local.py) starts each task as a subprocess (of KFP's shell), so a
``kill -9`` of ``kadet run`` would orphan the running task: it would go on writing into the work
dir while a rerun takes the free lock. Three parts keep that from happening:

- :func:`parent_exported`: ``kadet run`` exports :data:`PARENT_ENV` = its :func:`process_key`
  (host, boot, pid namespace, pid, start time: a pid alone can be reused) for the tasks it starts;
- :func:`follow_parent`: every task (``kadet.kubeflow.steps`` on import, the distill workers) checks
  once a second that its parent still lives and kills itself (``SIGKILL``, like the kill it follows)
  once it is gone;
- :func:`end_left_processes`: the next process that takes the work dir's lock ends whatever a
  killed holder left (``SIGTERM``, then ``SIGKILL``) before it starts.

The same keys tell whether an MLflow run marked RUNNING still has a live process
(kadet/registry/tracking.py ``close_stale_runs``). A key is judged only on the host, in the boot
and in the pid namespace it was made in, and only where /proc answers (:func:`alive` says ``None``
elsewhere): a task in a container cannot see the host's processes, and a run on another machine is
none of this machine's business. Tasks in containers (``kadet run --runner docker``) do not follow
their run: the next run on the work dir stops their containers (kadet/kubeflow/containers.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: The :func:`process_key` of the ``kadet run`` whose tasks these are.
PARENT_ENV = "KADET_PARENT"
_PROC = Path("/proc")


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:").strip("[]")
    except OSError:
        return "-"


def _boot() -> str:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()[:8] or "-"
    except OSError:
        return "-"


#: What :func:`_start_time` says when it cannot tell (no /proc, no permission, no file handles left).
UNKNOWN = "?"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22); None if
    there is no such process (or only its zombie); :data:`UNKNOWN` when it cannot be read."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return UNKNOWN
    fields = stat[stat.rfind(")") + 2:].split()
    if len(fields) <= 19:
        return UNKNOWN
    if fields[0] in ("Z", "X"):   # a zombie has ended: only its exit status is left
        return None
    return fields[19]


def process_key(pid: int | None = None) -> str:
    """``host/boot/pid-namespace/pid/start-time`` of ``pid`` (default: this process): a pid and its
    start tick are unique on one machine since its boot, in one pid namespace."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}/{_boot()}/{_namespace()}/{pid}/{_start_time(pid) or UNKNOWN}"


def owner_key() -> str:
    """Whose work this process does: the ``kadet run`` that started it, else itself."""
    return os.environ.get(PARENT_ENV) or process_key()


def alive(key: str) -> bool | None:
    """Whether the process of ``key`` still runs; None when it cannot be told here (another host,
    boot or pid namespace, no /proc, a start time that cannot be read, a malformed key)."""
    parts = key.split("/")
    if (len(parts) != 5 or "-" in (parts[1], parts[2]) or UNKNOWN == parts[4] or not parts[3].isdigit()
            or (parts[0], parts[1], parts[2]) != (socket.gethostname(), _boot(), _namespace())):
        return None
    start = _start_time(int(parts[3]))
    if start == UNKNOWN:
        return None
    return start == parts[4]


def key_pid(key: str) -> int | None:
    parts = key.split("/")
    return int(parts[3]) if len(parts) == 5 and parts[3].isdigit() else None


@contextlib.contextmanager
def parent_exported() -> Iterator[str]:
    """:data:`PARENT_ENV` is this process's key for the block (what its tasks follow)."""
    before = os.environ.get(PARENT_ENV)
    os.environ[PARENT_ENV] = key = process_key()
    try:
        yield key
    finally:
        if before is None:
            os.environ.pop(PARENT_ENV, None)
        else:
            os.environ[PARENT_ENV] = before


_following = threading.Event()


def follow_parent(interval: float = 1.0) -> bool:
    """If this process was started for a ``kadet run`` (:data:`PARENT_ENV`) that can be watched
    from here, a daemon thread kills this process once that run is gone. Once per process;
    returns whether it is watched."""
    key = os.environ.get(PARENT_ENV, "")
    if not key or key == process_key() or (state := alive(key)) is None:
        return False
    if state is False:   # started after its run was killed (a restarted worker): it has nothing to do
        _stop(key)
    if _following.is_set():
        return True
    _following.set()

    def watch() -> None:
        while alive(key) is not False:   # None (cannot tell for now) is never taken for gone
            time.sleep(interval)
        _stop(key)
    threading.Thread(target=watch, name="kadet-follow-parent", daemon=True).start()
    return True


def _stop(key: str) -> None:
    try:
        print(f"kadet: the kadet run this task belongs to (pid {key_pid(key)}) is gone; the task stops",
              file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - its console may be gone with it
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def left_processes(key: str) -> list[int]:
    """The live processes started for the ``kadet run`` of ``key`` (their environment holds it)."""
    if alive(key) is None:
        return []
    wanted = f"{PARENT_ENV}={key}".encode()
    found = []
    for entry in _PROC.iterdir() if _PROC.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in env.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def end_left_processes(key: str, grace: float = 10.0) -> list[int]:
    """End what the (dead) ``kadet run`` of ``key`` left running: ``SIGTERM``, then after
    ``grace`` seconds ``SIGKILL``; returns once they are gone, with their pids. A process that
    cannot be ended (another user's, stuck in the kernel) is a KadetError naming it: a run must not
    start beside it."""
    if alive(key) is not False:   # the holder lives on (it let the lock go) or cannot be judged here
        return []
    pids = left_processes(key)
    if not pids:
        return []
    starts = {pid: _start_time(pid) for pid in pids}
    log.warning("stopping %d task process(es) a killed kadet run (pid %s) left running: %s",
                len(pids), key_pid(key), ", ".join(map(str, pids)))

    def running() -> list[int]:
        return [p for p in pids if starts[p] is not None and _start_time(p) == starts[p]]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        for pid in running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not running():
            break
    if still := running():
        from kadet.core.errors import KadetError

        raise KadetError(f"task process(es) {', '.join(map(str, still))} of a killed kadet run (pid {key_pid(key)}) "
                         "could not be ended; end them, then run again")
    return pids
