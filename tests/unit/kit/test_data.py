"""Validation of corpora, queries and qrels: every bad file names its file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kadet.kit.data import Document, load_beir, read_corpus, read_qrels, read_queries
from kadet.core.errors import DataError
from kadet.core.io import write_jsonl
from tests.doubles.data import write_beir


def _lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines)
    path.write_bytes(data)
    return path


GOOD = json.dumps({"_id": "a", "title": "T", "text": "alpha text"})


def test_reads_good_corpus(tmp_path):
    p = _lines(tmp_path / "c.jsonl", [GOOD, "", json.dumps({"id": 7, "text": "seven"})])
    docs = read_corpus(p)
    assert list(docs) == ["a", "7"]
    assert docs["a"] == Document("a", "alpha text", "T")
    assert docs["a"].full_text() == "T alpha text"
    assert docs["7"].full_text() == "seven"


@pytest.mark.parametrize(
    "bad, line, field, needle",
    [
        ('{"_id": "b", "text": "x"', 2, None, "malformed JSON"),
        (json.dumps({"title": "no id", "text": "x"}), 2, "_id", "missing id"),
        (json.dumps({"_id": "b", "title": "no text"}), 2, "text", "missing"),
        (json.dumps({"_id": "b", "text": 5}), 2, "text", "must be a string"),
        (json.dumps({"_id": "", "text": "x"}), 2, "_id", "non-empty"),
        (json.dumps(["not", "an", "object"]), 2, None, "expected a JSON object"),
        (GOOD, 2, "_id", "duplicate id 'a' (first seen on line 1)"),
    ],
)
def test_corpus_errors_name_file_line_field(tmp_path, bad, line, field, needle):
    p = _lines(tmp_path / "corpus.jsonl", [GOOD, bad])
    with pytest.raises(DataError) as exc:
        read_corpus(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert needle in msg
    assert exc.value.line == line and exc.value.field == field
    if field:
        assert f"field '{field}'" in msg


def test_non_utf8_bytes(tmp_path):
    p = _lines(tmp_path / "corpus.jsonl", [GOOD, GOOD.replace('"a"', '"b"'), b'{"_id": "c", "text": "caf\xe9"}'])
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: invalid UTF-8 byte 0xe9 at column 26"):
        read_corpus(p)


def test_empty_corpus(tmp_path):
    p = _lines(tmp_path / "corpus.jsonl", ["", "   "])
    with pytest.raises(DataError, match=r"corpus\.jsonl: empty corpus"):
        read_corpus(p)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_corpus(tmp_path / "nope.jsonl")


def test_queries_duplicate_and_missing_text(tmp_path):
    p = _lines(tmp_path / "queries.jsonl", [json.dumps({"_id": "q1", "text": "x"}), json.dumps({"_id": "q1", "text": "y"})])
    with pytest.raises(DataError, match=r"queries\.jsonl:2: field '_id': duplicate id 'q1'"):
        read_queries(p)
    p = _lines(tmp_path / "queries.jsonl", [json.dumps({"_id": "q1"})])
    with pytest.raises(DataError, match=r"queries\.jsonl:1: field 'text': missing"):
        read_queries(p)


def test_qrels_unknown_ids_and_bad_rows(tmp_path):
    head = "query-id\tcorpus-id\tscore"
    p = _lines(tmp_path / "test.tsv", [head, "q1\td1\t1", "q1\td9\t1"])
    with pytest.raises(DataError, match=r"test\.tsv:3: field 'corpus-id': unknown document id 'd9'"):
        read_qrels(p, corpus_ids={"d1"}, query_ids={"q1"})
    p = _lines(tmp_path / "test.tsv", [head, "q7\td1\t1"])
    with pytest.raises(DataError, match=r"test\.tsv:2: field 'query-id': unknown query id 'q7'"):
        read_qrels(p, corpus_ids={"d1"}, query_ids={"q1"})
    p = _lines(tmp_path / "test.tsv", [head, "q1\td1\thigh"])
    with pytest.raises(DataError, match=r"test\.tsv:2: field 'score': not a finite number"):
        read_qrels(p)
    p = _lines(tmp_path / "test.tsv", [head, "q1 d1 1"])
    with pytest.raises(DataError, match=r"test\.tsv:2: expected 3 tab-separated columns, got 1"):
        read_qrels(p)
    p = _lines(tmp_path / "test.tsv", [head, b"q1\td\xff\t1"])
    with pytest.raises(DataError, match=r"test\.tsv:2: invalid UTF-8 byte 0xff"):
        read_qrels(p)


def test_load_beir_cross_checks(tmp_path, tiny_beir):
    ds = load_beir(tiny_beir)
    assert len(ds.corpus) == 4 and len(ds.eval_queries()) == 3
    (tiny_beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tmissing\t1\n")
    with pytest.raises(DataError, match=r"qrels/test\.tsv:2: field 'corpus-id'"):
        load_beir(tiny_beir)
    with pytest.raises(DataError, match=r"missing qrels file"):
        load_beir(tiny_beir, split="dev")


def test_parquet_corpus(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"_id": ["a", "b", "a"], "title": ["", "", ""], "text": ["x", "y", "z"]}), p)
    with pytest.raises(DataError, match=r"corpus\.parquet:3: field '_id': duplicate id 'a'"):
        read_corpus(p)
    pq.write_table(pa.table({"_id": ["a", "b"], "text": ["x", "y"]}), p)
    assert list(read_corpus(p)) == ["a", "b"]
    write_beir(tmp_path / "pq", [{"_id": "a", "text": "x"}], [{"_id": "q", "text": "x?"}], [("q", "a", 1)])
    (tmp_path / "pq" / "corpus.jsonl").unlink()
    pq.write_table(pa.table({"_id": ["a"], "text": ["x"]}), tmp_path / "pq" / "corpus.parquet")
    assert list(load_beir(tmp_path / "pq").corpus) == ["a"]


def test_write_jsonl_atomic(tmp_path):
    p = tmp_path / "out" / "x.jsonl"
    assert write_jsonl(p, [{"a": "é"}, {"b": 2}]) == 2
    assert p.read_text(encoding="utf-8").splitlines() == ['{"a": "é"}', '{"b": 2}']
    assert not (tmp_path / "out" / "x.jsonl.tmp").exists()


def test_real_scifact_loads(scifact):
    ds = load_beir(scifact, "test")
    assert len(ds.corpus) == 5183
    assert len(ds.eval_queries()) == 300
    assert sum(len(v) for v in ds.qrels.values()) == 339


def test_read_records_checks_fields(tmp_path):
    from kadet.kit.data import read_records

    p = _lines(tmp_path / "queries.jsonl", [json.dumps({"qid": "g1", "text": "x", "type": "claim"}),
                                            json.dumps({"qid": "g2", "text": 3, "type": "claim"})])
    with pytest.raises(DataError, match=r"queries\.jsonl:2: field 'text': must be str, got int"):
        read_records(p, "qid", {"text": str, "type": str})
    p = _lines(tmp_path / "queries.jsonl", [json.dumps({"qid": "g1", "text": "x"})])
    with pytest.raises(DataError, match=r"queries\.jsonl:1: field 'type': missing"):
        read_records(p, "qid", {"text": str, "type": str})
    assert read_records(p, "qid", {"text": str}) == [{"qid": "g1", "text": "x"}]
