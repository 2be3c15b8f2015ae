"""Tasks end with the kadet run that started them; what a killed run left is ended by the next
lock holder (kadet/core/lifeline.py). Real processes, real kill -9s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kadet.core import lifeline
from kadet.core.errors import KadetError
from kadet.core.storage import work_dir_lock

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if lifeline.alive(lifeline.process_key(pid)) is False or lifeline._start_time(pid) is None:
            return True
        time.sleep(0.05)
    return False


def _dead_key() -> str:
    """The key of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "import os, sys, kadet.core.lifeline as l; print(l.process_key())"],
                         stdout=subprocess.PIPE, text=True)
    key = p.communicate(timeout=60)[0].strip()
    assert lifeline.alive(key) is False
    return key


def test_a_key_is_judged_only_where_it_was_made():
    me = lifeline.process_key()
    assert lifeline.alive(me) is True and lifeline.key_pid(me) == os.getpid()
    host, boot, ns, pid, start = me.split("/")
    assert lifeline.alive(f"{host}/{boot}/{ns}/{pid}/{int(start) + 1}") is False   # the pid, reused by another process
    assert lifeline.alive(f"elsewhere/{boot}/{ns}/{pid}/{start}") is None          # another machine
    assert lifeline.alive(f"{host}/0badb007/{ns}/{pid}/{start}") is None           # before a reboot
    assert lifeline.alive(f"{host}/{boot}/4026530000/{pid}/{start}") is None       # a container's pid namespace
    assert lifeline.alive(f"{host}/{boot}/{ns}/{pid}/?") is None                   # made where /proc did not answer
    assert lifeline.alive("garbage") is None


def test_a_task_started_after_its_run_was_killed_stops_at_once_and_others_are_left_alone(tmp_path):
    dead = _dead_key()
    late = subprocess.run([sys.executable, "-c", "import time; from kadet.core import lifeline; "
                           "lifeline.follow_parent(); time.sleep(60); print('ran on')"],
                          env={**os.environ, lifeline.PARENT_ENV: dead}, capture_output=True, text=True, timeout=60)
    assert late.returncode == -signal.SIGKILL and "is gone; the task stops" in late.stderr
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env={**os.environ, lifeline.PARENT_ENV: lifeline.process_key()})   # a live run's task
    try:
        assert lifeline.end_left_processes(dead) == [] and other.poll() is None
        assert lifeline.end_left_processes(lifeline.process_key()) == []   # a live holder's tasks are its own
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_a_zombie_counts_as_gone():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    key = lifeline.process_key(p.pid)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and lifeline._start_time(p.pid) is not None:   # exited, not yet reaped
        time.sleep(0.05)
    assert lifeline.alive(key) is False
    p.wait()


def test_a_task_dies_with_its_killed_parent(tmp_path):
    """The parent exports its key and starts a task through a shell (as KFP's runner does); kill -9
    of the parent: the task, which would otherwise sleep 120 s, is gone within seconds."""
    ready = tmp_path / "task.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from kadet.core import lifeline
        with lifeline.parent_exported():
            subprocess.Popen(["sh", "-c", sys.executable + " -c 'import os, time, pathlib; "
                              "from kadet.core import lifeline; assert lifeline.follow_parent(interval=0.2); "
                              "pathlib.Path(\\"{ready}\\").write_text(str(os.getpid())); time.sleep(120)'"])
            time.sleep(300)
    """)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (ready.exists() and ready.read_text()):
        time.sleep(0.05)
    task = int(ready.read_text())
    assert lifeline.alive(lifeline.process_key(task))
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    assert _gone(task, within=10), "the task outlived its killed parent"


def test_the_next_lock_holder_ends_what_a_killed_holder_left(tmp_path):
    """A holder killed while its task ran (the task does not follow it: an old kadet, or a task
    stuck in C code) leaves the lock free and the task running; the next process to take the lock
    ends the task before it starts."""
    work = tmp_path / "w"
    dead = _dead_key()
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                            env={**os.environ, lifeline.PARENT_ENV: dead})
    (work).mkdir()
    (work / ".kadet.lock").write_text(f"pid {lifeline.key_pid(dead)} (kadet run, since then)\nkey {dead}\n")
    assert lifeline.left_processes(dead) == [left.pid]
    with work_dir_lock(work, "kadet run"):
        assert left.poll() is not None or _gone(left.pid, within=5)
        assert (work / ".kadet.lock").read_text().splitlines()[1] == f"key {lifeline.process_key()}"
    assert left.wait(timeout=5) == -signal.SIGTERM


def test_a_live_holder_still_refuses_with_its_first_line(tmp_path):
    with work_dir_lock(tmp_path, "kadet run"):
        p = subprocess.run([sys.executable, "-c", f"from kadet.core.storage import work_dir_lock\n"
                            f"with work_dir_lock({str(tmp_path)!r}): pass"], capture_output=True, text=True)
    assert p.returncode == 1 and f"in use by pid {os.getpid()} (kadet run, since" in p.stderr
    assert "key " not in p.stderr.splitlines()[-1]
    with pytest.raises(KadetError):   # and in this process, a second holder is refused too (flock per open file)
        with work_dir_lock(tmp_path, "a"), work_dir_lock(tmp_path, "b"):
            pass
