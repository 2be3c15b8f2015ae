"""The corpus fingerprint (local files and a real S3 server), the settings that count, lineage diffs."""

from __future__ import annotations

import shutil

import pytest

from kadet.stages import fingerprint

from kadet.core import storage
from kadet.core.config import load_config
from kadet.kit.data import read_corpus
from tests.doubles.s3server import rclone_binary, rclone_s3, s3_env


def test_same_content_same_fingerprint_wherever_it_lives(tiny_beir, tmp_path):
    copy = shutil.copytree(tiny_beir, tmp_path / "elsewhere" / "copy")
    a, b = fingerprint.corpus_fingerprint(tiny_beir), fingerprint.corpus_fingerprint(copy)
    assert a == b and a["files"] == 3 and a["bytes"] > 0
    with open(copy / "corpus.jsonl", "a", encoding="utf-8") as f:   # the corpus grew at the same address
        f.write('{"_id": "d5", "title": "Tea", "text": "Green tea and blood pressure in adults."}\n')
    grown = fingerprint.corpus_fingerprint(copy)
    assert grown["digest"] != a["digest"] and grown["bytes"] > a["bytes"]
    # the same bytes, a new modification time: content, not mtime, decides
    (copy / "corpus.jsonl").write_bytes((copy / "corpus.jsonl").read_bytes())
    assert fingerprint.corpus_fingerprint(copy) == grown
    # a qrels file kept elsewhere counts too
    assert fingerprint.corpus_fingerprint(copy, tiny_beir / "qrels" / "test.tsv")["digest"] != grown["digest"]


def test_a_missing_corpus_is_named():
    with pytest.raises(Exception, match="nowhere/corpus: no such corpus file or folder"):
        fingerprint.corpus_fingerprint("nowhere/corpus")


@pytest.mark.skipif(rclone_binary() is None, reason="rclone (the S3 server) is not installed")
def test_s3_fingerprint_is_a_listing_not_a_download(tiny_beir, tmp_path, monkeypatch):
    with rclone_s3(tmp_path / "s3") as endpoint:
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("KADET_S3_CACHE", str(tmp_path / "s3cache"))
        storage.publish(tiny_beir, "s3://kadet/corpora/docs")
        storage.publish(tiny_beir, "s3://kadet/corpora/copy")
        first = fingerprint.corpus_fingerprint("s3://kadet/corpora/docs")
        assert first == fingerprint.corpus_fingerprint("s3://kadet/corpora/copy")   # content, not the address
        assert first["files"] == 3 and not (tmp_path / "s3cache").exists()          # nothing downloaded
        assert fingerprint.corpus_fingerprint("s3://kadet/corpora/docs") == first    # same content: same digest
        (tiny_beir / "corpus.jsonl").write_text((tiny_beir / "corpus.jsonl").read_text()
                                                + '{"_id": "d5", "title": "Tea", "text": "Green tea."}\n')
        storage.publish(tiny_beir / "corpus.jsonl", "s3://kadet/corpora/docs/corpus.jsonl")
        assert fingerprint.corpus_fingerprint("s3://kadet/corpora/docs")["digest"] != first["digest"]
        with pytest.raises(storage.NoSuchPrefix, match="s3://kadet/corpora/none: no such object or prefix"):
            fingerprint.corpus_fingerprint("s3://kadet/corpora/none")


def test_inputs_fingerprint_counts_what_shapes_the_model_only():
    base = load_config(None, [])
    same = load_config(None, ["work_dir=/elsewhere", "data.data_dir=/other/address", "generate.num_shards=4",
                              "label.num_shards=2", "label.shard_index=1", "register.ndcg_floor=0.9", "distill.progress=false",
                              "tracking.tracking_uri=http://mlflow:5000"])
    other = load_config(None, ["distill.lr=3e-5"])
    fp = fingerprint.inputs_fingerprint(base, "abc")
    assert fingerprint.inputs_fingerprint(same, "abc") == fp
    assert fingerprint.inputs_fingerprint(other, "abc") != fp
    assert fingerprint.inputs_fingerprint(base, "abd") != fp


def test_changes_between_two_corpora(tiny_beir, tmp_path):
    old = fingerprint.document_digests(read_corpus(tiny_beir / "corpus.jsonl"))
    new = dict(old, d1="0" * 12, d9="1" * 12)
    del new["d2"]
    assert fingerprint.changes(old, new) == {"added": 1, "changed": 1, "removed": 1, "unchanged": 2}
    assert fingerprint.changes(None, new) is None
    assert "unknown" in fingerprint.changes_text(None)
    path = fingerprint.keep_digests(tmp_path, "fp1", old)
    assert path == tmp_path / "store" / "corpus" / "fp1.json"
    assert fingerprint.read_digests(tmp_path, "fp1") == old and fingerprint.read_digests(tmp_path, "fp2") is None
