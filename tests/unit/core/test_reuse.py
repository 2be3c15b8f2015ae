"""The store that outlives a run: content keys, whole segments, parallel writers, settings folders."""

from __future__ import annotations

import json

from kadet.core.reuse import Store, digest


def test_values_survive_the_run_and_writers_do_not_collide(tmp_path):
    a = Store.open(tmp_path, "teacher", {"member": "dense", "model": "m1"}, run="run-1")
    b = Store.open(tmp_path, "teacher", {"model": "m1", "member": "dense"}, run="run-1")   # another shard
    assert a.folder == b.folder
    a.put({digest("q", "p1"): 0.5})
    b.put({digest("q", "p2"): 0.25})
    a.put({})                                                     # nothing: no empty segment
    assert len(a.segments()) == 2
    later = Store.open(tmp_path, "teacher", {"member": "dense", "model": "m1"}, run="run-2")
    assert later.get([digest("q", "p1"), digest("q", "p2"), digest("q", "p3")]) == {
        digest("q", "p1"): 0.5, digest("q", "p2"): 0.25}
    assert json.loads((later.folder / "used.json").read_text())["run"] == "run-2"
    # other settings: another folder, nothing shared
    assert Store.open(tmp_path, "teacher", {"member": "dense", "model": "m2"}).get([digest("q", "p1")]) == {}
    assert later.compact() == 2 and len(later.segments()) == 1
    assert Store.open(tmp_path, "teacher", {"member": "dense", "model": "m1"}).get([digest("q", "p2")])
    # get() matches keys as written: a key that JSON would escape is refused, never silently lost
    import pytest

    with pytest.raises(ValueError, match="escapes"):
        later.put({'a "quoted" key': 1.0})


def test_keys_are_content_not_ids():
    assert digest("what is aspirin", "Aspirin reduces pain.") != digest("what is aspirin", "Aspirin reduces fever.")
    assert digest("a", "b") == digest("a", "b") and len(digest("a", "b")) == 33


def test_a_store_opened_inside_a_stage_records_that_pipeline_run(tmp_path):
    """``kadet prune`` keeps the store folders the newest runs used: each must name its run."""
    from kadet.registry import tracking
    from kadet.core.config import load_config

    cfg = load_config(None, [f"work_dir={tmp_path}"])
    with tracking.stage_run(cfg, "label", "run-7"):
        store = Store.open(tmp_path, "teacher", {"member": "dense"})
    assert json.loads((store.folder / "used.json").read_text())["run"] == "run-7"


def test_a_finished_output_is_kept_and_taken_back_only_for_the_same_depends(tmp_path, monkeypatch):
    """``finished``: the first run does the work and keeps ``out``; a run with the same depends gets
    that output (and the earlier run's key) without doing the work; other depends, or a block that
    failed, keep nothing."""
    import pytest

    from kadet.core.layout import RUN_KEY_ENV
    from kadet.core.reuse import finished

    work = tmp_path / "work"

    def run(key: str, depends: dict, fail: bool = False) -> tuple[str, str]:
        monkeypatch.setenv(RUN_KEY_ENV, key)
        out = tmp_path / key
        with finished(work, "mine", depends, out) as earlier:
            if not earlier:
                out.mkdir()
                (out / "manifest.json").write_text("{}")
                (out / "candidates.jsonl").write_text(f"made by {key}\n")
                if fail:
                    raise RuntimeError("killed half way")
        return earlier, (out / "candidates.jsonl").read_text()

    with pytest.raises(RuntimeError):
        run("run-0", {"config": "a"}, fail=True)
    assert run("run-1", {"config": "a"}) == ("", "made by run-1\n")          # the failed try kept nothing
    assert run("run-2", {"config": "a"}) == ("run-1", "made by run-1\n")     # taken, not redone
    assert run("run-3", {"config": "b"}) == ("", "made by run-3\n")          # other settings: done again
    kept = sorted(p.relative_to(work).as_posix() for p in (work / "store").rglob("candidates.jsonl"))
    assert len(kept) == 2 and all(p.startswith("store/finished-mine/") for p in kept)
    assert not list((work / "store").rglob(".output-*"))
