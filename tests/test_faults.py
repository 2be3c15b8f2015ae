"""Fault injection: corrupt logs, crashed and concurrent writers (rows of issue #12).

Each test injects the fault by hand (a corrupt line, a left-over temp file, two writers):
these are FAKE faults, on real files and the real readers and writers."""

from __future__ import annotations

import json
import threading

import numpy as np

from kadet.data import append_jsonl, read_log, write_jsonl
from kadet.encode import EmbeddingCache


def test_a_corrupt_middle_line_is_skipped_and_no_good_record_is_lost(tmp_path, caplog):
    log = tmp_path / "generations.jsonl"
    append_jsonl(log, [{"key": f"k{i}", "v": i} for i in range(4)])
    with open(log, "a") as fh:
        fh.write('{"key": "k4", "v": \n')                    # corrupt, but a whole line
    append_jsonl(log, [{"key": f"k{i}", "v": i} for i in range(5, 9)])
    size = log.stat().st_size
    with caplog.at_level("WARNING"):
        done = read_log(log)
    assert sorted(done) == [f"k{i}" for i in range(9) if i != 4]  # was: 4 of 8 kept, file truncated
    assert log.stat().st_size == size and f"{log}:5:" in caplog.text


def test_only_a_torn_last_line_is_cut(tmp_path):
    log = tmp_path / "scores.jsonl"
    append_jsonl(log, [{"key": "a"}, {"key": "b"}])
    whole = log.stat().st_size
    with open(log, "a") as fh:
        fh.write('{"key": "c", "sco')
    assert sorted(read_log(log)) == ["a", "b"] and log.stat().st_size == whole
    append_jsonl(log, [{"key": "c"}])
    assert sorted(read_log(log)) == ["a", "b", "c"]


def test_a_crashed_cache_write_leaves_nothing_a_reader_trips_on(tmp_path):
    cache = EmbeddingCache(tmp_path, "ns")
    cache.put([b"a" * 20, b"b" * 20], np.ones((2, 4), dtype=np.float32))
    (tmp_path / "ns" / ".tmp-part-dead.npz").write_bytes(b"PK\x03\x04 half a zip")   # crash mid-write
    (tmp_path / "ns" / "part-broken.npz").write_bytes(b"not a zip at all")           # a damaged part
    fresh = EmbeddingCache(tmp_path, "ns")
    mask, emb = fresh.get([b"a" * 20, b"c" * 20])
    assert mask.tolist() == [True, False] and emb.shape == (1, 4)   # was: BadZipFile on every read


def test_two_writers_of_one_file_never_mix_rows(tmp_path):
    out = tmp_path / "queries.jsonl"
    errors = []

    def writer(tag):
        try:
            for _ in range(20):
                write_jsonl(out, ({"qid": f"{tag}{i}", "text": "x" * 200} for i in range(300)))
        except Exception as exc:  # noqa: BLE001 - the test reports any crash
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert not errors and len(rows) == 300 and len({r["qid"][0] for r in rows}) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["queries.jsonl"]   # no temp file left behind


def test_the_evaluation_splits_positives_never_reach_training(tmp_path):
    """Evaluating on ``dev`` with the default exclude_splits=[test] kept dev positives in training."""
    from kadet.config import load_config
    from kadet.prepare import prepare
    from tests.conftest import write_beir

    docs = [{"_id": f"d{i}", "title": "", "text": f"Passage number {i} about topic {i} and its findings."}
            for i in range(5)]
    root = write_beir(tmp_path / "b", docs, [{"_id": "q1", "text": "topic 1"}, {"_id": "q2", "text": "topic 2"}],
                      [("q1", "d1", 1)])
    (root / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td2\t1\n")
    cfg = load_config(None, [f"data.data_dir={root}", "data.split=dev"])
    prepare(cfg, tmp_path / "p")
    kept = {json.loads(l)["_id"] for l in (tmp_path / "p" / "corpus.jsonl").read_text().splitlines()}
    assert kept == {"d0", "d3", "d4"}   # dev (d2) and test (d1) positives both out


class _Payload:
    """A FAKE malicious checkpoint object: unpickling it would call os.system."""

    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/kadet-pwned-by-checkpoint",))


def test_a_checkpoint_that_would_run_code_is_refused(tiny_st, tmp_path):
    import os

    import pytest
    import torch

    from kadet.config import load_config
    from kadet.distill import Distiller
    from kadet.errors import KadetError
    from tests.test_distill import _labels

    labels = _labels(tmp_path / "labels.jsonl")
    cfg = load_config(None, [f"retrieval.model={tiny_st}", f"work_dir={tmp_path / 'w'}", "distill.batch_size=8",
                             "distill.epochs=1", "distill.progress=false", "distill.passage_max_len=32"])
    ckpt = tmp_path / "out" / "checkpoints" / "epoch-1"
    ckpt.mkdir(parents=True)
    torch.save({"model": _Payload()}, ckpt / "trainer.pt")   # what a writer of the bucket could plant
    if os.path.exists("/tmp/kadet-pwned-by-checkpoint"):
        os.remove("/tmp/kadet-pwned-by-checkpoint")
    with pytest.raises(KadetError, match="refusing to load"):
        Distiller(cfg, labels, tmp_path / "out").resume()
    assert not os.path.exists("/tmp/kadet-pwned-by-checkpoint")


def test_distill_never_resumes_from_checkpoints_of_other_labels_or_settings(tiny_st, tmp_path, caplog):
    """Was: a rerun with new labels / loss / lr said "resumed from epoch-1" and trained 0 s."""
    from kadet.config import load_config
    from kadet.distill import distill
    from tests.test_distill import _labels

    base = [f"retrieval.model={tiny_st}", f"work_dir={tmp_path / 'w'}", "distill.batch_size=8", "distill.epochs=1",
            "distill.progress=false", "distill.passage_max_len=32", "distill.patience=5"]
    a = _labels(tmp_path / "a.jsonl", seed=0)
    first = distill(load_config(None, base), a, tmp_path / "out")
    assert not first.extra["resumed"]
    again = distill(load_config(None, base), a, tmp_path / "out")          # same everything: resumes
    assert again.extra["resumed"]
    b = _labels(tmp_path / "b.jsonl", seed=1)
    with caplog.at_level("WARNING"):
        new_labels = distill(load_config(None, base), b, tmp_path / "out")
    assert not new_labels.extra["resumed"] and "starting over" in caplog.text
    other_lr = distill(load_config(None, [*base, "distill.lr=1e-3"]), b, tmp_path / "out")
    assert not other_lr.extra["resumed"] and other_lr.extra["seconds_this_run"] > 0
