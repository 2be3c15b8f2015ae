"""Fault injection: corrupt logs, crashed and concurrent writers (rows of issue #12).

Each test injects the fault by hand (a corrupt line, a left-over temp file, two writers):
these are FAKE faults, on real files and the real readers and writers."""

from __future__ import annotations

import json
import threading

import numpy as np

from kadet.kit.encode import EmbeddingCache
from kadet.core.io import append_jsonl, write_jsonl
from kadet.core.journal import read_log


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
    from kadet.core.config import load_config
    from kadet.stages.prepare import prepare
    from tests.doubles.data import write_beir

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

    from kadet.core.config import load_config
    from kadet.stages.distill import Distiller
    from kadet.core.errors import KadetError
    from tests.unit.stages.test_distill import _labels

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
    from kadet.core.config import load_config
    from kadet.stages.distill import distill
    from tests.unit.stages.test_distill import _labels

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


# ---------------------------------------------------------------- stale resumable work (rows 1-2)


def test_generate_rerun_with_other_settings_or_passages_starts_over(tmp_path, caplog):
    """Was: "3 already done, 0 to do" and the old model's rows kept under a new manifest."""
    from kadet.core.config import load_config
    from kadet.kit.data import Document
    from kadet.stages.generate import LOG_NAME, run_generation
    from tests.unit.stages.test_generate import ScriptedBackend

    docs = [Document(f"d{i}", f"The properties of topic d{i}: enzyme {i} binds its substrate.") for i in range(3)]
    base = ["generate.types={question: 1}", "generate.progress=false"]
    run_generation(load_config(None, base), docs, tmp_path, ScriptedBackend())
    same = ScriptedBackend()
    run_generation(load_config(None, base), docs, tmp_path, same)
    assert same.calls == 0                                              # same settings: resumed, nothing to do
    warmer = ScriptedBackend()
    with caplog.at_level("WARNING"):
        m = run_generation(load_config(None, [*base, "generate.temperature=0.7"]), docs, tmp_path, warmer)
    assert sorted(warmer.seen) == ["d0|question|0", "d1|question|0", "d2|question|0"]
    assert "temperature" in caplog.text and "starting over" in caplog.text
    assert len(list(tmp_path.glob("generations.stale-*.jsonl"))) == 1   # the old records are kept aside
    assert m.counts["kept"] == 3
    # one passage's text changed: only its request is generated again
    docs[1] = Document("d1", "Other properties of topic d1: ion channels in neurons.")
    edited = ScriptedBackend()
    run_generation(load_config(None, [*base, "generate.temperature=0.7"]), docs, tmp_path, edited)
    assert edited.seen == ["d1|question|0"]
    assert len(read_log(tmp_path / LOG_NAME)) == 3


def test_label_rerun_after_the_candidates_or_teacher_changed_scores_again(tmp_path, tiny_st, caplog):
    """Was: "0 to score" and 180 of 200 labelled lists not in the current candidates."""
    from kadet.core.config import load_config
    from kadet.stages.label.stage import label

    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"_id": f"d{i}", "title": "", "text": f"document {i} on topic {i % 3} with words {i}"}
                         for i in range(8)])

    def candidates(shift):
        rows = [{"qid": f"q{j}", "query": f"topic {j} words {j}", "type": "question", "source_doc_id": f"d{j}",
                 "candidates": [{"doc_id": f"d{(j + k + (shift if j == 0 else 0)) % 8}"} for k in range(4)]}
                for j in range(3)]
        return write_jsonl(tmp_path / "candidates.jsonl", rows)

    opts = ["label.rerank_depth=4", "label.list_size=4", "label.consistency=false", "label.min_top_percentile=0",
            "label.dev_fraction=0", f"retrieval.model={tiny_st}", f"work_dir={tmp_path / 'w'}"]
    candidates(0)
    first = label(load_config(None, ["label.teacher=bm25", *opts]), tmp_path / "candidates.jsonl", corpus, tmp_path / "out")
    assert first.counts["scored_now"] == 3
    candidates(2)                                                       # q0's list changed
    second = label(load_config(None, ["label.teacher=bm25", *opts]), tmp_path / "candidates.jsonl", corpus, tmp_path / "out")
    assert second.counts["scored_now"] == 1
    with caplog.at_level("WARNING"):
        third = label(load_config(None, ["label.teacher=dense", *opts]), tmp_path / "candidates.jsonl", corpus,
                      tmp_path / "out")
    assert third.counts["scored_now"] == 3 and "teacher" in caplog.text   # another teacher: all scored again
    rows = [json.loads(x) for x in (tmp_path / "out" / "labels.jsonl").read_text().splitlines()]
    q0 = next(r for r in rows if r["qid"] == "q0")
    assert {p["doc_id"] for p in q0["passages"]} == {"d2", "d3", "d4", "d5"}   # the current list, not the old one


# ---------------------------------------------------------------- partial outputs (row "generate fails")


def test_a_partial_generation_is_never_published_and_mine_refuses_it(tmp_path):
    import pytest

    from kadet.core.config import load_config
    from kadet.kit.data import Document, read_records
    from kadet.core.errors import KadetError
    from kadet.stages.generate import run_generation
    from kadet.core.manifest import Manifest
    from tests.unit.stages.test_generate import ScriptedBackend

    class HalfDown(ScriptedBackend):
        """FAKE endpoint failure: every other request raises."""

        def generate(self, requests):
            out = super().generate(requests)
            return [RuntimeError("503") if i % 2 else o for i, o in enumerate(out)]

    docs = [Document(f"d{i}", f"The properties of topic d{i}: enzyme {i} binds its substrate.") for i in range(6)]
    cfg = load_config(None, ["generate.types={question: 1}", "generate.progress=false"])
    (tmp_path / "queries.jsonl").write_text('{"qid": "old"}\n')          # an older complete output
    with pytest.raises(KadetError, match="3 of 6 requests failed"):
        run_generation(cfg, docs, tmp_path, HalfDown())
    assert not (tmp_path / "queries.jsonl").exists() and Manifest.read(tmp_path).complete is False
    (tmp_path / "queries.jsonl").write_text('{"qid": "x", "text": "t", "type": "question", "source_doc_id": "d0"}\n')
    with pytest.raises(KadetError, match="did not finish"):             # a downstream reader checks the manifest
        read_records(tmp_path / "queries.jsonl", "qid", {"text": str})
    run_generation(cfg, docs, tmp_path, ScriptedBackend())               # the rerun finishes the other half
    assert Manifest.read(tmp_path).complete and len(read_records(tmp_path / "queries.jsonl", "qid", {"text": str})) == 6


# ---------------------------------------------------------------- messy corpora and bad input


def test_empty_documents_are_dropped_and_counted_and_the_run_goes_on(tmp_path, caplog):
    from kadet.core.config import load_config
    from kadet.kit.data import load_beir
    from kadet.stages.prepare import prepare
    from tests.doubles.data import write_beir

    docs = [{"_id": f"d{i}", "title": "", "text": f"Passage number {i} about topic {i} and its findings."}
            for i in range(5)] + [{"_id": "e1", "title": "", "text": "   "}, {"_id": "e2", "title": " ", "text": ""}]
    root = write_beir(tmp_path / "b", docs, [{"_id": "q1", "text": "topic 1"}, {"_id": "q2", "text": "topic 2"}],
                      [("q1", "d1", 1), ("q2", "e1", 1), ("q2", "d2", 1)])
    with caplog.at_level("WARNING"):
        m = prepare(load_config(None, [f"data.data_dir={root}"]), tmp_path / "p")
    assert m.dropped["empty_text"] == 2 and m.counts["corpus"] == 5
    assert "corpus.jsonl:6: field 'text': empty text and title" in caplog.text
    assert "1 judgements of empty (skipped) documents dropped" in caplog.text
    assert load_beir(root).qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}}


def _cli(*args, env=None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "kadet.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_user_errors_are_one_line_never_a_traceback(tmp_path, tiny_beir):
    """The bad-input rows that gave tracebacks or exit 0: each is now exit 2 and one clear line."""
    import shutil

    from tests.doubles.data import write_beir

    as_dir = tmp_path / "as_dir"
    shutil.copytree(tiny_beir, as_dir)
    (as_dir / "corpus.jsonl").unlink()
    (as_dir / "corpus.jsonl").mkdir()
    inf = shutil.copytree(tiny_beir, tmp_path / "inf")
    (inf / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tinf\n")
    header = write_beir(tmp_path / "header", [{"_id": "d1", "text": "a passage"}], [{"_id": "q1", "text": "q"}], [])
    w = ["--work-dir", str(tmp_path / "w")]
    cases = {
        "is a folder, expected a file": ["evaluate", "--data", str(as_dir), "--retriever", "bm25", *w],
        "test.tsv:2: field 'score': not a finite number: 'inf'": ["evaluate", "--data", str(inf), "--retriever", "bm25", *w],
        "no judgements": ["evaluate", "--data", str(header), "--retriever", "bm25", *w],
        "'retrieval.retriever' = 'bm52' must be one of dense, bm25, hybrid":
            ["evaluate", "--data", str(tiny_beir), "--set", "retrieval.retriever=bm52", *w],
        "not valid YAML": ["config", "--set", "x=[oops"],
        "argument --top-k: -5 must be >= 1": ["evaluate", "--data", str(tiny_beir), "--top-k", "-5", *w],
        "argument --sample-size: -1 must be >= 0": ["prepare", "--data", str(tiny_beir), "--sample-size", "-1", *w],
        "'generate.num_shards' = 0 must be >= 1": ["config", "--set", "generate.num_shards=0"],
        "S3: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY":
            ["evaluate", "--data", "s3://bucket/scifact", "--retriever", "bm25", *w],
    }
    no_creds = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "KADET_S3_ENDPOINT": "http://127.0.0.1:9"}
    for expected, args in cases.items():
        r = _cli(*args, env=no_creds)
        assert r.returncode == 2, (args, r.returncode, r.stderr[-2000:])
        assert expected in r.stderr and "Traceback" not in r.stderr, (args, r.stderr[-2000:])


def test_yaml_off_stays_a_word_for_a_string_setting(tmp_path):
    import pytest

    from kadet.core.config import load_config
    from kadet.core.errors import ConfigError

    assert load_config(None, ["mine.round_trip=off"]).mine.round_trip == "off"
    assert load_config(None, ["distill.bf16=off"]).distill.bf16 is False
    (tmp_path / "c.yaml").write_text("mine: {round_trip: off}\n")
    with pytest.raises(ConfigError, match="quote it"):
        load_config(tmp_path / "c.yaml")


# ---------------------------------------------------------------- one work dir, one process


def test_two_kadet_processes_on_one_work_dir(tmp_path, tiny_beir):
    """The second process is refused with a message naming the first; the first finishes.

    The first is the real ``kadet`` entry point whose command is replaced by one that waits for a
    release file (fault injection: a long-running command, so the overlap does not depend on
    timing); the second is a real ``kadet prepare``."""
    import subprocess
    import sys
    import time

    work, release = tmp_path / "w", tmp_path / "release"
    holder = (f"import pathlib, time, sys, kadet.cli as c\n"
              f"def slow(args):\n"
              f"    while not pathlib.Path({str(release)!r}).exists(): time.sleep(0.05)\n"
              f"    return 0\n"
              f"c.COMMANDS['evaluate'] = __import__('dataclasses').replace(c.COMMANDS['evaluate'], run=slow)\n"
              f"sys.exit(c.main(['evaluate', '--work-dir', {str(work)!r}]))\n")
    first = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = work / ".kadet.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and "kadet evaluate" in lock.read_text()):
        time.sleep(0.05)
    second = _cli("prepare", "--data", str(tiny_beir), "--work-dir", str(work))
    release.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and f"work dir {work} is in use by pid {first.pid} (kadet evaluate" in second.stderr
    assert not (work / "prepare").exists()
    again = _cli("prepare", "--data", str(tiny_beir), "--work-dir", str(work))   # free again once the first ended
    assert again.returncode == 0, again.stderr[-2000:]


# ---------------------------------------------------------------- S3


def test_a_deleted_s3_prefix_is_not_resurrected_from_the_local_staging_copy(tmp_path, monkeypatch):
    from kadet.core.storage import output_dir, s3_client
    from tests.doubles.s3server import rclone_s3, s3_env

    with rclone_s3(tmp_path / "s3") as endpoint:
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("KADET_S3_CACHE", str(tmp_path / "cache"))
        with output_dir("s3://kadet/runs/label") as local:
            (local / "scores.jsonl").write_text('{"key": "old"}\n')
            (local / "keep.jsonl").write_text('{"key": "k"}\n')
        s3 = s3_client()
        s3.remove_object("kadet", "runs/label/scores.jsonl")             # deleted in the bucket on purpose
        with output_dir("s3://kadet/runs/label") as local:
            assert sorted(p.name for p in local.iterdir() if p.suffix != ".etag") == ["keep.jsonl"]
        s3.remove_object("kadet", "runs/label/keep.jsonl")               # the whole prefix gone
        with output_dir("s3://kadet/runs/label") as local:
            assert not any(local.iterdir())
            (local / "new.jsonl").write_text("{}\n")
        names = sorted(o.object_name for o in s3.list_objects("kadet", "runs/", recursive=True))
        assert names == ["runs/label/new.jsonl"]
