"""The resumable log (kadet/core/journal.py) that generate and label share: its files, resume, merge, copy.
(Torn and corrupt lines: tests/system/test_faults.py; the stages' use of it: test_generate.py, test_label.py.)"""

from __future__ import annotations

import json

import pytest

from kadet.core.errors import KadetError
from kadet.core.journal import Journal, merge_logs

DEPENDS = {"model": "smollm2", "seed": 42, "bm25": (1.2, 0.75)}


def test_a_log_of_an_earlier_kadet_resumes_and_a_changed_setting_starts_over(tmp_path, caplog):
    # the files as earlier versions wrote them: the log, and <log>.depends.json (sorted keys, indent 2)
    log = tmp_path / "generations.jsonl"
    log.write_text('{"key": "a", "v": 1}\n{"key": "b", "v": 2}\n{"key": "a", "v": 3}\n')
    (tmp_path / "generations.jsonl.depends.json").write_text(json.dumps(json.loads(json.dumps(DEPENDS)), indent=2,
                                                                        sort_keys=True) + "\n")
    journal = Journal(log, DEPENDS)
    assert journal.depends_file.name == "generations.jsonl.depends.json"
    assert journal.resume() == {"a": {"key": "a", "v": 3}, "b": {"key": "b", "v": 2}}   # the last record of a key
    journal.append([{"key": "c", "v": 4}])
    assert sorted(Journal(log).records()) == ["a", "b", "c"]
    # another setting: the old records are set aside (kept), the log starts empty with the new sidecar
    assert Journal(log, {**DEPENDS, "seed": 7}).resume() == {}
    assert "seed changed" in caplog.text and Journal(log, {**DEPENDS, "seed": 7}).holds()
    [aside] = tmp_path.glob("generations.stale-*.jsonl")
    assert len(aside.read_text().splitlines()) == 4


def test_merge_checks_every_shard_and_later_records_win(tmp_path):
    shards = [Journal(tmp_path / f"s{i}" / "log.jsonl", DEPENDS) for i in range(3)]
    for i, shard in enumerate(shards[:2]):
        shard.path.parent.mkdir()
        shard.resume()
        shard.append([{"key": f"k{i}"}, {"key": "both", "from": i}])

    def refuse(i, shard):
        return f"shard {i}: {shard.path.parent.name}"

    merged = merge_logs(shards, missing_ok=True, refuse=refuse)
    assert merged == {"k0": {"key": "k0"}, "both": {"key": "both", "from": 1}, "k1": {"key": "k1"}}
    with pytest.raises(KadetError, match="shard 2: s2"):                      # a shard's log is missing
        merge_logs(shards, refuse=refuse)
    other = [Journal(s.path, {**DEPENDS, "model": "other"}) for s in shards[:2]]
    with pytest.raises(KadetError, match="shard 0: s0"):                      # written for other settings
        merge_logs(other, refuse=refuse)


def test_a_copied_log_keeps_what_it_was_written_for(tmp_path):
    src = Journal(tmp_path / "a" / "scores.shard-0-of-2.jsonl", DEPENDS)
    src.path.parent.mkdir()
    src.resume()
    src.append([{"key": "q1", "scores": [0.5]}])
    (tmp_path / "b").mkdir()
    src.copy_into(tmp_path / "b")
    copy = Journal(tmp_path / "b" / src.path.name, DEPENDS)
    assert copy.holds() and copy.records() == src.records()
    Journal(tmp_path / "a" / "missing.jsonl").copy_into(tmp_path / "b")        # nothing there: nothing copied
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [src.path.name, src.depends_file.name]
