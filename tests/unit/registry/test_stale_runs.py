"""A RUNNING MLflow run whose process was killed is closed as KILLED by the next kadet process
(kadet/registry/tracking.py ``close_stale_runs``); a run whose process lives, or that this machine
cannot judge, is left alone. A real sqlite MLflow store and real processes."""

from __future__ import annotations

import subprocess
import sys

from kadet.core import lifeline
from kadet.core.config import KadetConfig
from kadet.registry import tracking


def test_runs_of_killed_processes_are_closed_as_killed_and_no_other(tmp_path, monkeypatch):
    cfg = KadetConfig(work_dir=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", "from kadet.core import lifeline; print(lifeline.process_key())"],
                         stdout=subprocess.PIPE, text=True)
    dead = p.communicate(timeout=60)[0].strip()
    other_host = "another-machine/0badb007/4026531836/1/1"
    host, boot, *_ = lifeline.process_key().split("/")
    in_container = f"{host}/{boot}/4026530000/7/1"     # this machine, a container's pid namespace: never judged
    monkeypatch.setenv(lifeline.PARENT_ENV, dead)        # the parent run is owned by the (killed) kadet run
    parent = tracking.parent_run_id(cfg, "run-1")
    live_task_of_dead_run = tracking.create_stage_run(cfg, "distill", "distill", "run-1")  # its watchdog ends it
    monkeypatch.delenv(lifeline.PARENT_ENV)
    stage = tracking.create_stage_run(cfg, "distill", "distill", "run-1")   # owned by this (live) process
    c = tracking.client(cfg)
    exp = tracking.experiment_id(cfg)
    foreign = c.create_run(exp, tags={tracking.PROCESS_TAG: other_host}).info.run_id
    untagged = c.create_run(exp).info.run_id                               # an older kadet's run: no key
    # a task in a container of the killed kadet run: closed with its run
    contained = c.create_run(exp, tags={tracking.PROCESS_TAG: in_container, tracking.RUN_PROCESS_TAG: dead}).info.run_id
    contained_alive = c.create_run(exp, tags={tracking.PROCESS_TAG: in_container,
                                              tracking.RUN_PROCESS_TAG: lifeline.process_key()}).info.run_id
    assert c.get_run(parent).data.tags[tracking.PROCESS_TAG] == dead

    assert sorted(tracking.close_stale_runs(cfg)) == sorted([parent, contained])
    closed = c.get_run(parent)
    assert closed.info.status == "KILLED" and "ended without closing" in closed.data.tags[tracking.ERROR_TAG]
    for run_id in (stage, foreign, untagged, contained_alive, live_task_of_dead_run):
        assert c.get_run(run_id).info.status == "RUNNING"
    assert tracking.close_stale_runs(cfg) == []          # once
