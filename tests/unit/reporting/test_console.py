"""The run console and the progress channel: events in, lines out (no KFP here; the real DAG's
console is checked in tests/system/test_pipeline.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from kadet.core import progress
from kadet.reporting.console import Console, format_counts, session


def test_bars_write_throttled_events_to_the_channel(tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(progress.ENV, str(events))
    monkeypatch.setattr(progress, "current_stage", "label-0-of-2")
    for _ in progress.bar(desc="label", iterable=range(1000)):
        pass
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert lines[0]["n"] == 0 and lines[-1]["n"] == 1000 and lines[-1]["total"] == 1000
    assert len(lines) < 10                                     # throttled, not one line per item
    assert {x["stage"] for x in lines} == {"label-0-of-2"} and {x["desc"] for x in lines} == {"label"}


def test_no_channel_no_events_and_no_bar_when_hidden(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(progress.ENV, raising=False)
    b = progress.bar(10, "generate", show=False)
    b.update(10)
    b.close()
    assert capsys.readouterr().err == "" and list(tmp_path.iterdir()) == []


def test_console_prints_one_start_and_one_end_line_per_stage(tmp_path):
    events = tmp_path / "e.jsonl"
    rows = [{"event": "start", "stage": "mine"},
            {"event": "progress", "stage": "mine", "desc": "encode", "n": 5, "total": 10},
            {"event": "counts", "stage": "mine", "counts": {"queries": 4515, "candidates": 4515, "top_k": 100},
             "dropped": {"round_trip": 12}},
            {"event": "note", "stage": "mine", "text": "dense: an approximate faiss IVF index over 1,000,000 documents"},
            {"event": "end", "stage": "mine", "seconds": 183.71, "status": "ok"},
            {"event": "start", "stage": "label-0-of-1"},
            {"event": "end", "stage": "label-0-of-1", "seconds": 2.0, "status": "failed", "log": "/w/label.log"}]
    events.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"event": "start", "sta')   # a half-written line
    out = io.StringIO()
    con = Console(events, out, bars=False)
    con._drain()
    assert out.getvalue().splitlines() == [
        "  mine           started",
        "  mine           dense: an approximate faiss IVF index over 1,000,000 documents",
        "  mine           done  183.7 s   queries 4,515 · dropped 12 (round_trip 12)",
        "  label-0-of-1   started",
        "  label-0-of-1   FAILED after 2.0 s (log: /w/label.log)"]
    assert con.failed[0]["stage"] == "label-0-of-1"
    with open(events, "a") as f:                               # the rest of the line arrives later
        f.write('ge": "distill"}\n')
    con._drain()
    assert out.getvalue().splitlines()[-1] == "  distill        started"


def test_format_counts():
    assert format_counts({"a": 1, "b": 0.5, "flag": True, "name": "x"}, {"x": 0}) == "a 1 · b 0.5"
    assert (format_counts({"corpus": 300, "passages": 12, "excluded_ids": 19}, {"eval_relevant": 19, "not_sampled": 269},
                          "prepare") == "corpus 300 · passages 12 · dropped 288 (not_sampled 269, eval_relevant 19)")
    assert format_counts({"scored_now": 12}, {}, "label-0-of-2") == "scored_now 12"


def test_session_sends_subprocess_output_to_the_log_and_events_to_the_console(tmp_path, capfd):
    log = tmp_path / "run.log"
    with session(log, tmp_path / "ev.jsonl") as con:
        subprocess.run([sys.executable, "-c", "import sys; print('KFP Executor noise'); "
                        "print('a warning', file=sys.stderr)"], check=True)
        progress.event("start", stage="prepare")
        progress.event("end", stage="prepare", seconds=0.4, status="ok")
    shown = capfd.readouterr()
    assert shown.out.splitlines() == ["  prepare        started", "  prepare        done  0.4 s"]
    assert shown.err == "" and not con.failed
    text = log.read_text()
    assert "KFP Executor noise" in text and "a warning" in text
    assert progress.ENV not in __import__("os").environ          # restored


def test_a_terminal_gets_a_live_bar_with_rate_and_eta(tmp_path):
    out = io.StringIO()
    con = Console(tmp_path / "none.jsonl", out, bars=True)
    con.handle({"event": "start", "stage": "distill"})
    for n in (0, 10, 20):
        con.handle({"event": "progress", "stage": "distill", "desc": "distill epoch 1/3", "n": n, "total": 70})
    drawn = out.getvalue()
    assert "distill epoch 1/3" in drawn and "20/70" in drawn and "<" in drawn and "it/s" in drawn  # ETA, rate
    con.handle({"event": "end", "stage": "distill", "seconds": 5.0, "status": "ok"})
    assert out.getvalue().endswith("  distill        done  5.0 s\n")        # the bar is gone, the line stays


def test_the_console_can_keep_stdout_free_for_json(tmp_path, capfd):
    with session(tmp_path / "run.log", tmp_path / "ev.jsonl", to_stderr=True):
        progress.event("start", stage="mine")
    shown = capfd.readouterr()
    assert shown.out == "" and shown.err == "  mine           started\n"
