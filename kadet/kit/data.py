"""Records and validated readers for BEIR folders and plain JSONL / Parquet corpora.

Every reader checks its input and raises :class:`~kadet.core.errors.DataError` naming the file,
the line (1-based; the row for Parquet) and the field::

    ds = load_beir("../shared/data/beir/scifact", split="test")
    len(ds.corpus), len(ds.queries), len(ds.qrels)   # 5183 300 300

Formats
-------
``corpus.jsonl``   one JSON object per line: ``{"_id": str, "title": str?, "text": str}``
                   (``id`` or ``doc_id`` are accepted in place of ``_id``). Parquet corpora
                   have the same columns.
``queries.jsonl``  ``{"_id": str, "text": str}``
``qrels/<s>.tsv``  header line, then ``query-id<TAB>corpus-id<TAB>score`` (integer score)

Also here: :func:`normalise`, the text key of duplicate checks. Files are written by
:mod:`kadet.core.io` (atomic writers); resumable logs are :mod:`kadet.core.journal`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kadet.core.errors import DataError
from kadet.core.io import decode_line
from kadet.core.manifest import require_complete
from kadet.core.storage import localize

log = logging.getLogger(__name__)

ID_FIELDS = ("_id", "id", "doc_id")


@dataclass(frozen=True, slots=True)
class Document:
    """A passage of the corpus."""

    doc_id: str
    text: str
    title: str = ""

    def full_text(self, separator: str = " ") -> str:
        """Title and text joined as BEIR does (``title + " " + text``)."""
        return f"{self.title}{separator}{self.text}".strip() if self.title else self.text

    def to_json(self) -> dict[str, str]:
        """The BEIR corpus record."""
        return {"_id": self.doc_id, "title": self.title, "text": self.text}


@dataclass(frozen=True, slots=True)
class Query:
    """A query: human-written (evaluation) or synthetic."""

    qid: str
    text: str


Qrels = dict[str, dict[str, int]]


@dataclass
class Dataset:
    """A corpus with queries and relevance judgements for one split."""

    corpus: dict[str, Document]
    queries: dict[str, Query]
    qrels: Qrels
    source: str = ""
    files: dict[str, Path] = field(default_factory=dict)
    #: documents skipped for empty text and title (their judgements were dropped)
    empty_doc_ids: list[str] = field(default_factory=list)

    def eval_queries(self) -> dict[str, Query]:
        """The queries that have at least one judgement in this split."""
        return {qid: q for qid, q in self.queries.items() if qid in self.qrels}


_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """NFKC, lower case, punctuation removed, whitespace collapsed: the key for duplicate checks."""
    text = unicodedata.normalize("NFKC", text).lower()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line_number, line)`` for each non-blank line, newline stripped; bad UTF-8 raises."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = decode_line(raw, path, lineno).rstrip("\r\n")
            if line.strip():
                yield lineno, line


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; bad bytes or JSON raise."""
    for lineno, line in _text_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg} at column {exc.colno}", lineno) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
        yield lineno, obj


def _get_id(obj: dict, path: Path, lineno: int, id_fields: tuple[str, ...] = ID_FIELDS) -> str:
    for key in id_fields:
        if key in obj:
            value = obj[key]
            if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value).strip() == "":
                raise DataError(path, f"id must be a non-empty string, got {value!r}", lineno, key)
            return str(value)
    raise DataError(path, "missing id", lineno, id_fields[0])


def _get_text(obj: dict, key: str, path: Path, lineno: int, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(path, "missing", lineno, key)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(path, f"must be a string, got {type(value).__name__}", lineno, key)
    return value


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for broken files
            raise DataError(path, f"unreadable Parquet file: {exc}") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
    else:
        yield from _iter_jsonl(path)


def _readable_file(path: Path) -> Path:
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a file")
    return path


def _records(path: str | os.PathLike, id_fields: tuple[str, ...] = ID_FIELDS) -> Iterator[tuple[Path, int, str, dict]]:
    """``(local_path, line, id, object)`` per record; raises on a missing file or a duplicate id."""
    path = _readable_file(localize(path))
    first_line: dict[str, int] = {}
    for lineno, obj in _rows(path):
        rid = _get_id(obj, path, lineno, id_fields)
        if rid in first_line:
            raise DataError(path, f"duplicate id {rid!r} (first seen on line {first_line[rid]})", lineno,
                            id_fields[0])
        first_line[rid] = lineno
        yield path, lineno, rid, obj


def read_corpus(path: str | os.PathLike, empty_ids: list[str] | None = None) -> dict[str, Document]:
    """Read a corpus from JSONL or Parquet (local path or ``s3://`` URI).

    Documents whose text and title are both empty or whitespace are skipped with a warning
    (real collections have a few); their ids are appended to ``empty_ids`` when it is given.
    """
    docs: dict[str, Document] = {}
    empty: list[str] = []
    for local, lineno, doc_id, obj in _records(path):
        text = _get_text(obj, "text", local, lineno)
        title = _get_text(obj, "title", local, lineno, required=False)
        if not text.strip() and not title.strip():
            if not empty:
                log.warning("%s:%d: field 'text': empty text and title: document %r skipped", local, lineno, doc_id)
            empty.append(doc_id)
            continue
        docs[doc_id] = Document(doc_id=doc_id, text=text, title=title)
    if len(empty) > 1:
        log.warning("%s: %d documents with empty text and title skipped in all", localize(path), len(empty))
    if empty_ids is not None:
        empty_ids.extend(empty)
    if not docs:
        raise DataError(localize(path), "empty corpus: no documents found" + (
            f" ({len(empty)} with empty text and title)" if empty else ""))
    return docs


def read_queries(path: str | os.PathLike) -> dict[str, Query]:
    """Read ``queries.jsonl`` (``_id``, ``text``)."""
    queries: dict[str, Query] = {}
    for local, lineno, qid, obj in _records(path):
        text = _get_text(obj, "text", local, lineno)
        if not text.strip():
            raise DataError(local, "empty query text", lineno, "text")
        queries[qid] = Query(qid=qid, text=text)
    return queries


def read_records(path: str | os.PathLike, id_field: str, fields: dict[str, type]) -> list[dict]:
    """Read a stage's JSONL output (e.g. ``queries.jsonl`` with ``qid``), checking each field's type.

    ``fields`` maps required field names to their type (``str``, ``list``, ``dict``, ``float``).
    """
    require_complete(localize(path))
    rows = []
    for local, lineno, rid, obj in _records(path, (id_field,)):
        for name, tp in fields.items():
            if name not in obj or obj[name] is None:
                raise DataError(local, "missing", lineno, name)
            ok = isinstance(obj[name], (int, float)) and not isinstance(obj[name], bool) if tp is float \
                else isinstance(obj[name], tp)
            if not ok:
                raise DataError(local, f"must be {tp.__name__}, got {type(obj[name]).__name__}", lineno, name)
        obj[id_field] = rid
        rows.append(obj)
    return rows


def read_qrels(
    path: str | os.PathLike,
    corpus_ids: set[str] | dict | None = None,
    query_ids: set[str] | dict | None = None,
    skipped_doc_ids: set[str] | list[str] = (),
) -> Qrels:
    """Read a BEIR qrels TSV; unknown query or corpus ids are errors when the sets are given.
    Judgements of ``skipped_doc_ids`` (documents read_corpus skipped as empty) are dropped with
    a warning."""
    skipped, dropped = set(skipped_doc_ids), 0
    path = _readable_file(localize(path))
    qrels: Qrels = {}
    for lineno, line in _text_lines(path):
        cols = line.split("\t")
        if lineno == 1 and cols[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(cols) != 3:
            raise DataError(path, f"expected 3 tab-separated columns, got {len(cols)}", lineno)
        qid, did, score = (c.strip() for c in cols)
        try:
            value = int(float(score))
        except (ValueError, OverflowError):  # OverflowError: inf
            raise DataError(path, f"not a finite number: {score!r}", lineno, "score") from None
        if query_ids is not None and qid not in query_ids:
            raise DataError(path, f"unknown query id {qid!r}", lineno, "query-id")
        if did in skipped:
            dropped += 1
            continue
        if corpus_ids is not None and did not in corpus_ids:
            raise DataError(path, f"unknown document id {did!r}", lineno, "corpus-id")
        qrels.setdefault(qid, {})[did] = value
    if dropped:
        log.warning("%s: %d judgements of empty (skipped) documents dropped", path, dropped)
    return qrels


def corpus_file(data_dir: str | os.PathLike) -> Path:
    """The corpus of a BEIR folder (``corpus.jsonl`` or ``corpus.parquet``), or ``data_dir`` itself
    when it is a corpus file; local or ``s3://``."""
    root = localize(data_dir)
    if root.is_file():
        return root
    for name in ("corpus.jsonl", "corpus.parquet"):
        if (root / name).exists():
            return root / name
    raise DataError(root / "corpus.jsonl", f"missing corpus file in {data_dir}")


def eval_kind(data_dir: str | os.PathLike, split: str, qrels: str | os.PathLike | None, kind: str = "auto") -> str:
    """``gold`` when the evaluation has judged queries (``qrels`` given, or ``queries.jsonl`` and
    ``qrels/<split>.tsv`` in the folder), else ``silver``; ``kind`` other than auto is checked."""
    if kind == "silver":
        return "silver"
    root = localize(data_dir)
    judged = bool(qrels) or has_judged_queries(root, split)
    if kind == "gold" and not judged:
        raise DataError(root / "qrels" / f"{split}.tsv", "evaluation.kind is gold but there are no judged queries "
                        f"for split {split!r} (queries.jsonl and this qrels file); use evaluation.kind=auto or silver")
    return "gold" if judged else "silver"


def has_judged_queries(root: Path, split: str) -> bool:
    """Whether the folder ``root`` holds judged queries for ``split``: ``queries.jsonl`` and
    ``qrels/<split>.tsv`` both (a gold run), or neither (a corpus alone: silver). One without the
    other is a :class:`DataError` naming both files: read as a corpus alone, the judged passages
    would go into training and the judged queries would never be evaluated."""
    if not root.is_dir():
        return False
    queries, qrels = root / "queries.jsonl", root / "qrels" / f"{split}.tsv"
    judged = sorted((root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
    if judged and not queries.exists():
        found = qrels if qrels.exists() else judged[0]
        raise DataError(found, f"judgements without the queries they judge: {queries} is missing; add it "
                        "(a gold run), or move the qrels out of the folder (a silver run)")
    if queries.exists() and not qrels.exists():
        others = ", ".join(p.stem for p in judged)
        raise DataError(queries, f"queries without judgements for split {split!r}: {qrels} is missing; "
                        + (f"set data.split to one of {others}, " if others else "add it (a gold run), ")
                        + "or move queries.jsonl out of the folder (a silver run)")
    return queries.exists()


def load_beir(data_dir: str | os.PathLike, split: str = "test", qrels: str | os.PathLike | None = None) -> Dataset:
    """Load and cross-check a BEIR folder (local or ``s3://``); ``qrels`` (a file, local or
    ``s3://``) replaces the folder's ``qrels/<split>.tsv``."""
    root = localize(data_dir)
    files = {
        "corpus": root / "corpus.jsonl",
        "queries": root / "queries.jsonl",
        "qrels": localize(qrels) if qrels else root / "qrels" / f"{split}.tsv",
    }
    if not files["corpus"].exists() and (root / "corpus.parquet").exists():
        files["corpus"] = root / "corpus.parquet"
    for name, p in files.items():
        if not p.exists():
            raise DataError(p, f"missing {name} file in BEIR folder {data_dir}")
    empty: list[str] = []
    corpus = read_corpus(files["corpus"], empty)
    queries = read_queries(files["queries"])
    judged = read_qrels(files["qrels"], corpus_ids=corpus, query_ids=queries, skipped_doc_ids=empty)
    if not judged:
        raise DataError(files["qrels"], "no judgements (a header only?): nothing to evaluate on")
    return Dataset(corpus=corpus, queries=queries, qrels=judged, source=str(data_dir), files=files, empty_doc_ids=empty)
