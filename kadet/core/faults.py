"""FAULT INJECTION, for kadet's kill tests only: ``KADET_FAULT=<point>`` kills ``kadet run`` there.

A few places name a point (:func:`point`): the end of each pipeline step (``after:<stage>``;
``after:register``: the version is tagged with the gate's decision, no alias yet), and inside the
registry path (``register:created``: the version exists, its gate tags do not). With :data:`FAULT_ENV` set to a point's name, the
task that reaches it sends ``SIGKILL`` to the ``kadet run`` it belongs to (as a user's ``kill -9``
would) and waits there: the task must then die with its parent (kadet/core/lifeline.py). Unset (as
always outside tests/system/test_kills.py), a point does nothing.
"""

from __future__ import annotations

import os
import signal
import time

from kadet.core import lifeline

FAULT_ENV = "KADET_FAULT"
#: How long a task waits at the point after the kill: it should be killed long before.
WAIT_S = 60.0


def point(name: str) -> None:
    """Kill the ``kadet run`` of this task if ``$KADET_FAULT`` names this point."""
    if os.environ.get(FAULT_ENV) != name:
        return
    key = os.environ.get(lifeline.PARENT_ENV, "")
    if lifeline.alive(key) is not True:
        raise RuntimeError(f"{FAULT_ENV}={name}: no live {lifeline.PARENT_ENV} to kill here")
    os.kill(lifeline.key_pid(key), signal.SIGKILL)
    time.sleep(WAIT_S)   # not killed with it: go on, as the orphan would (the kill test fails on what it does)
