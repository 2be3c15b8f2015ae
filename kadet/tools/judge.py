"""Pooled, blinded relevance judging in a local web page: real queries in, BEIR qrels out.

The TREC recipe at the scale of one person and one afternoon: the top ``depth`` passages of the
base model, the candidate model and BM25 are merged, deduplicated and shuffled per query (the
page never says which system found a passage), a person grades them 2/1/0, every answer is
appended to ``judgements.jsonl`` at once (fsync), and the completely judged queries are exported
as ``queries.jsonl`` + ``qrels/test.tsv``::

    settings = JudgeSettings(base="all-MiniLM-L6-v2", candidate="out/distill/model")
    session = open_session(cfg, "data/", "logs/queries.txt", ".kadet/judge", settings)
    server = make_server(session)            # http://127.0.0.1:<port>/ ; serve_forever()
    result = export(session, "data/")        # queries judged, nDCG@10 of both, paired bootstrap

Which queries: the ``max_queries`` where base and candidate disagree most (1 - overlap of their
top 10) and a ``random_share`` drawn uniformly from the rest, each recorded with its reason
(``pick``), so the judged set is not only the hard cases.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shlex
import shutil
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from kadet.core.storage import mask_uri
from kadet.core.config import KadetConfig
from kadet.kit.data import Dataset, Document, Qrels, _records, corpus_file, read_corpus, read_queries
from kadet.core.errors import DataError, KadetError
from kadet.core.io import json_roundtrip, read_json, read_text
from kadet.core.manifest import digest
from kadet.kit.search import Run, ranked

log = logging.getLogger(__name__)

GRADES = (0, 1, 2)
#: The largest request body the page's server reads; a larger Content-Length is answered 413.
MAX_BODY = 64 * 1024
#: Seconds a connection may take to send its request (a body shorter than its Content-Length waits this long).
READ_TIMEOUT = 10.0
#: Completely judged queries below which the paired test is never called decided.
MIN_DECIDE = 10
#: The cut at which base and candidate are compared and their disagreement is measured.
CUT = 10
POOL_FILE, JUDGEMENTS_FILE = "pool.json", "judgements.jsonl"


@dataclass(frozen=True)
class JudgeSettings:
    """What a pool is built from; a rerun with the same out folder must pass the same."""

    base: str
    candidate: str
    depth: int = 10
    max_queries: int = 50
    random_share: float = 0.3
    seed: int = 42

    def __post_init__(self):
        if self.depth < 1 or self.max_queries < 1:
            raise KadetError(f"depth and max_queries must be >= 1, got {self.depth} and {self.max_queries}")
        if not 0.0 <= self.random_share <= 1.0:
            raise KadetError(f"random_share must be in [0, 1], got {self.random_share}")


@dataclass
class PoolQuery:
    """One query to judge: its pooled passages in the order shown (shuffled, sources hidden)."""

    qid: str
    text: str
    pick: str            # "disagreement" or "random"
    disagreement: float  # 1 - overlap of the base and candidate top 10
    docs: list[str]


@dataclass
class Pool:
    """``pool.json``: the queries to judge, in judging order, and what each system retrieved."""

    settings: dict
    queries: list[PoolQuery]
    #: top max(depth, 10) of base and candidate per query, for the figures (never sent to the page)
    runs: dict[str, Run]
    #: which systems put each pooled passage in their top ``depth`` (analysis only, never shown)
    sources: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict:
        return {"settings": self.settings, "created": self.created, "queries": [asdict(q) for q in self.queries],
                "runs": self.runs, "sources": self.sources}

    @classmethod
    def from_json(cls, obj: dict) -> "Pool":
        return cls(settings=obj["settings"], created=obj.get("created", ""),
                   queries=[PoolQuery(**q) for q in obj["queries"]], runs=obj["runs"], sources=obj.get("sources", {}))

    def query(self, qid: str) -> PoolQuery | None:
        return next((q for q in self.queries if q.qid == qid), None)


# ---------------------------------------------------------------- queries and pooling


def read_user_queries(path: str | os.PathLike) -> dict[str, str]:
    """``{qid: text}`` from a ``queries.jsonl`` (``_id``, ``text``) or a ``.txt`` file with one query
    per line (ids ``q1..qn`` in order of the non-blank lines)."""
    path = Path(path)
    if path.suffix == ".txt":
        if not path.is_file():
            raise DataError(path, "file not found")
        text = read_text(path)
        lines = [line.strip() for line in text.splitlines()]
        queries = {f"q{i}": t for i, t in enumerate((t for t in lines if t), start=1)}
    else:
        queries = {qid: q.text for qid, q in read_queries(path).items()}
    if not queries:
        raise DataError(path, "no queries")
    return queries


def disagreement(a: list[str], b: list[str], k: int = CUT) -> float:
    """1 - |top k of a ∩ top k of b| / k: 0 when two rankings share their top k, 1 when disjoint
    (k is cut to the longer list, for a corpus smaller than k)."""
    n = max(len(a[:k]), len(b[:k]))
    return 1.0 - len(set(a[:k]) & set(b[:k])) / n if n else 0.0


def select_queries(scores: dict[str, float], n: int, random_share: float, seed: int) -> dict[str, str]:
    """``{qid: "disagreement" | "random"}`` for ``min(n, len(scores))`` queries: the most
    disagreeing first (ties in a seeded random order), then ``round(random_share * n)`` drawn
    uniformly from the rest. Returned in a seeded random judging order, so stopping early still
    leaves a mix of both."""
    n = min(n, len(scores))
    rng = random.Random(seed)
    order = list(scores)
    rng.shuffle(order)
    by_disagreement = sorted(order, key=lambda q: -scores[q])  # stable: the shuffle breaks ties
    n_random = min(round(random_share * n), n)
    picked = {q: "disagreement" for q in by_disagreement[: n - n_random]}
    rest = [q for q in order if q not in picked]
    picked.update({q: "random" for q in rng.sample(rest, n_random)})
    judging = list(picked)
    rng.shuffle(judging)
    return {q: picked[q] for q in judging}


def pool_docs(rankings: dict[str, list[str]], depth: int, seed: int,
              qid: str) -> tuple[list[str], dict[str, list[str]]]:
    """The union of each system's top ``depth``, shuffled with a seed per query, and each
    passage's sources."""
    sources: dict[str, list[str]] = {}
    for name, docs in rankings.items():
        for d in docs[:depth]:
            sources.setdefault(d, []).append(name)
    docs = sorted(sources)
    random.Random(f"{seed}:{qid}").shuffle(docs)
    return docs, sources


def _where(path_or_name: str) -> str:
    """A local path made absolute (so the same folder compares equal); a model name as is."""
    p = Path(path_or_name)
    return str(p.resolve()) if p.exists() else path_or_name


def pool_settings(data_dir: str | os.PathLike, queries_file: str | os.PathLike, s: JudgeSettings) -> dict:
    """What ``pool.json`` was built for: the settings, the corpus and the query file (by content)."""
    return json_roundtrip({**asdict(s), "base": _where(s.base), "candidate": _where(s.candidate),
                           "data": _where(str(data_dir)), "queries_file": _where(str(queries_file)),
                           "queries_sha256": digest(Path(queries_file))})


def load_corpus(data_dir: str | os.PathLike) -> Dataset:
    """The corpus of a BEIR folder (or a corpus file) as a Dataset without judged queries."""
    path = corpus_file(data_dir)
    return Dataset(corpus=read_corpus(path), queries={}, qrels={}, source=str(data_dir), files={"corpus": path})


def build_pool(cfg: KadetConfig, ds: Dataset, queries: dict[str, str], s: JudgeSettings, settings: dict) -> Pool:
    """Retrieve with base and candidate for every query, choose the queries, pool them with BM25."""
    from kadet.stages.evaluate import retrieve

    rcfg = copy.deepcopy(cfg)
    rcfg.retrieval.top_k = max(s.depth, CUT)
    log.info("judge: retrieving %d queries with the base model %s", len(queries), s.base)
    base = retrieve(rcfg, ds, queries, "dense", s.base)
    log.info("judge: retrieving with the candidate %s", s.candidate)
    cand = retrieve(rcfg, ds, queries, "dense", s.candidate)
    scores = {q: disagreement(ranked(base[q]), ranked(cand[q])) for q in queries}
    chosen = select_queries(scores, s.max_queries, s.random_share, s.seed)
    bm25 = retrieve(rcfg, ds, {q: queries[q] for q in chosen}, "bm25")
    pooled, sources = [], {}
    for qid, pick in chosen.items():
        docs, src = pool_docs({"base": ranked(base[qid]), "candidate": ranked(cand[qid]),
                               "bm25": ranked(bm25.get(qid, {}))}, s.depth, s.seed, qid)
        pooled.append(PoolQuery(qid, queries[qid], pick, round(scores[qid], 4), docs))
        sources[qid] = src
    runs = {"base": {q: base[q] for q in chosen}, "candidate": {q: cand[q] for q in chosen}}
    return Pool(settings=settings, queries=pooled, runs=runs, sources=sources,
                created=time.strftime("%Y-%m-%d %H:%M:%S"))




def load_or_build_pool(cfg: KadetConfig, data_dir: str | os.PathLike, queries_file: str | os.PathLike,
                       out: str | os.PathLike, s: JudgeSettings, lock=None) -> Pool:
    """``<out>/pool.json`` when it was built for these settings (a rerun resumes), else a new pool;
    one built for other settings is an error (its judgements would not match). ``lock`` (a
    context manager) is held while a new pool is built (it writes the embedding cache)."""
    out = Path(out)
    path = out / POOL_FILE
    settings = pool_settings(data_dir, queries_file, s)
    if path.exists():
        try:
            pool = Pool.from_json(read_json(path))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(path, f"unreadable pool ({exc}); move it aside to start over") from None
        changed = sorted(k for k in set(settings) | set(pool.settings) if settings.get(k) != pool.settings.get(k))
        if changed:
            raise KadetError(f"{path} was built for other settings ({', '.join(changed)} changed: "
                             + "; ".join(f"{k} {pool.settings.get(k)!r} -> {settings.get(k)!r}" for k in changed)
                             + "); pass the same options to resume, or another --out to start a new pool")
        log.info("judge: resuming %s (%d queries)", path, len(pool.queries))
        return pool
    queries = read_user_queries(queries_file)
    ds = load_corpus(data_dir)
    with lock or contextlib.nullcontext():
        pool = build_pool(cfg, ds, queries, s, settings)
    out.mkdir(parents=True, exist_ok=True)
    write_text_synced(path, json.dumps(pool.to_json(), ensure_ascii=False))
    log.info("judge: pooled %d queries, %d passages; wrote %s", len(pool.queries),
             sum(len(q.docs) for q in pool.queries), path)
    return pool


# ---------------------------------------------------------------- judgements


def is_grade(value) -> bool:
    """A grade is the integer 0, 1 or 2: not 2.0, "2" or True."""
    return type(value) is int and value in GRADES


def read_judgements(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """``{qid: {doc_id: grade}}`` from ``judgements.jsonl``; the last answer per (query, passage)
    wins. A torn last line (a crash mid-write: no newline after it) is ignored here and cut off the
    file before the next answer is appended (:meth:`Judgements.add`); a bad grade (an older kadet
    saved 2.0) is reported as ``file:line`` and read as its integer or skipped, never crashed on;
    any other bad line is an error naming its line."""
    path = Path(path)
    grades: dict[str, dict[str, int]] = {}
    if not path.exists():
        return grades
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                log.warning("%s:%d: torn last line (interrupted write) ignored", path, lineno)
                break
            rec = _judgement(path, lineno, raw) if raw.strip() else None
            if rec is not None:
                grades.setdefault(rec["qid"], {})[rec["doc_id"]] = rec["grade"]
    return grades


def _judgement(path: Path, lineno: int, raw: bytes) -> dict | None:
    """One line of the answer log as a checked record; None for an answer to skip (reported)."""
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        rec = _unglued(raw)   # an older kadet appended the next answer to a torn line
        if rec is None:
            raise DataError(path, f"malformed JSON: {exc}", lineno) from None
        log.warning("%s:%d: a torn answer glued to the next one (older kadet): the torn part ignored", path, lineno)
    if not isinstance(rec, dict):
        raise DataError(path, "expected a JSON object", lineno)
    for name in ("qid", "doc_id"):
        if not isinstance(rec.get(name), str) or not rec[name]:
            raise DataError(path, "missing or not a string", lineno, name)
    grade = rec.get("grade")
    if is_grade(grade):
        return rec
    if isinstance(grade, float) and grade in GRADES:
        log.warning("%s:%d: field 'grade': %r read as %d (saved by an older kadet)", path, lineno, grade, int(grade))
        return {**rec, "grade": int(grade)}
    log.warning("%s:%d: field 'grade': must be an integer 0, 1 or 2, got %.40r: answer skipped (the passage is "
                "asked again)", path, lineno, grade)
    return None


def _unglued(raw: bytes) -> dict | None:
    """The whole record at the end of a line that starts with a torn one, if there is one."""
    at = raw.rfind(b'{"qid": ')
    try:
        rec = json.loads(raw[at:]) if at > 0 else None
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


def complete_queries(pool: Pool, grades: dict[str, dict[str, int]]) -> list[str]:
    """Ids of the queries whose every pooled passage is graded, in judging order."""
    return [q.qid for q in pool.queries if q.docs and all(d in grades.get(q.qid, {}) for d in q.docs)]


def judged_qrels(pool: Pool, grades: dict[str, dict[str, int]]) -> Qrels:
    """The grades of the completely judged queries (0-graded passages included)."""
    return {q: dict(sorted(grades[q].items())) for q in complete_queries(pool, grades)}


@dataclass
class JudgeStatus:
    """The judging session's status (not the register gate's ``Decision``): base vs candidate on
    the completely judged queries and whether the paired test decides yet. ``public()`` is what
    the page may see: whether the paired test decides, never which system is ahead."""

    done: int
    total: int
    judged: int
    passages: int
    base: float = float("nan")
    candidate: float = float("nan")
    ci: tuple[float, float] = (float("nan"), float("nan"))
    confidence: float = 0.9
    decides: bool = False
    more_needed: int | None = None
    no_relevant: int = 0

    def message(self) -> str:
        if self.decides:
            return (f"enough to decide: the paired test separates the two models at {self.confidence:.0%} "
                    f"on {self.done} judged queries")
        left = self.total - self.done
        if self.total < MIN_DECIDE:
            return (f"not yet: the pool has {self.total} queries; at least {MIN_DECIDE} judged are needed to "
                    "decide (pass a larger --max-queries)")
        if self.more_needed is None and self.done >= MIN_DECIDE:
            text = "not yet: the two models score the same on every judged query so far"
        elif self.more_needed is None:
            more = MIN_DECIDE - self.done
            text = f"not yet: judge at least {more} more quer{'y' if more == 1 else 'ies'}"
        else:
            text = f"not yet: about {self.more_needed} more judged queries usually needed"
        if self.more_needed is not None and self.more_needed > left:
            text += f" (more than the {left} left: the difference may be too small to detect with this pool)"
        return text

    def public(self) -> dict:
        return {"done": self.done, "total": self.total, "judged": self.judged, "passages": self.passages,
                "decides": self.decides, "message": self.message()}


def judge_status(pool: Pool, grades: dict[str, dict[str, int]], confidence: float = 0.9, seed: int = 0,
                 ndcg_k: int = CUT) -> JudgeStatus:
    """nDCG@10 of base and candidate on the completely judged queries (pytrec_eval) and the paired
    bootstrap interval of the difference; it decides when the interval excludes 0 and at least
    ``MIN_DECIDE`` queries are judged. Otherwise estimates the queries still needed (normal
    approximation: the interval half-width shrinks as 1/sqrt(n))."""
    from kadet.stages.evaluate import paired_bootstrap, per_query_metrics

    qrels = judged_qrels(pool, grades)
    d = JudgeStatus(done=len(qrels), total=len(pool.queries), passages=sum(len(q.docs) for q in pool.queries),
                    judged=sum(1 for q in pool.queries for doc in q.docs if doc in grades.get(q.qid, {})),
                    confidence=confidence)
    if not qrels:
        return d
    d.no_relevant = sum(1 for rels in qrels.values() if not any(g > 0 for g in rels.values()))
    metric = f"ndcg@{ndcg_k}"
    per = {name: {q: m[metric] for q, m in per_query_metrics(qrels, pool.runs[name], ndcg_k=ndcg_k).items()}
           for name in ("base", "candidate")}
    d.base = sum(per["base"].values()) / d.done
    d.candidate = sum(per["candidate"].values()) / d.done
    boot = paired_bootstrap(per["base"], per["candidate"], confidence=d.confidence, seed=seed)
    d.ci = (boot["ci_low"], boot["ci_high"])
    d.decides = d.done >= MIN_DECIDE and (d.ci[0] > 0 or d.ci[1] < 0)
    diffs = [per["candidate"][q] - per["base"][q] for q in qrels]
    if not d.decides and len(diffs) >= 2 and abs(statistics.fmean(diffs)) > 1e-9:
        z = statistics.NormalDist().inv_cdf(1 - (1 - d.confidence) / 2)
        need = math.ceil((z * statistics.stdev(diffs) / abs(statistics.fmean(diffs))) ** 2)
        d.more_needed = max(need - d.done, MIN_DECIDE - d.done, 1)
    return d


class Judgements:
    """The append-only answer log of one out folder; thread-safe (the server is threaded)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.grades = read_judgements(self.path)

    def add(self, qid: str, doc_id: str, grade: int) -> None:
        """Append one answer and fsync before returning: an answer acknowledged is never lost."""
        if not is_grade(grade):
            raise KadetError(f"grade must be the integer 0, 1 or 2, got {grade!r}")
        rec = {"qid": qid, "doc_id": doc_id, "grade": grade, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                cut_torn_tail(fh, self.path)
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.grades.setdefault(qid, {})[doc_id] = grade

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {q: dict(g) for q, g in self.grades.items()}


def cut_torn_tail(fh, path: Path) -> None:
    """Cut what follows the log's last newline (a torn write: a crash, a full disk) so the next
    answer starts on its own line, as :func:`kadet.core.journal.read_log` does; ``fh`` is open
    ``a+b`` (appends go to the end whatever the position)."""
    size = fh.seek(0, os.SEEK_END)
    if not size:
        return
    fh.seek(size - 1)
    if fh.read(1) == b"\n":
        return
    fh.seek(0)
    end = fh.read().rfind(b"\n") + 1
    log.warning("%s: torn last line (interrupted write, %d bytes) cut off", path, size - end)
    fh.truncate(end)
    fh.flush()
    os.fsync(fh.fileno())


@dataclass
class Session:
    """One judging session: the pool, its corpus, the answer log and where exports go."""

    pool: Pool
    corpus: dict[str, Document]
    judgements: Judgements
    data_dir: Path
    export_to: Path
    confidence: float = 0.9
    seed: int = 42
    force: bool = False
    #: which registered version the candidate is, and the flags that reach its registry (:func:`gate_target`)
    gate_version: str = "challenger"
    gate_flags: str = ""

    def status(self) -> JudgeStatus:
        return judge_status(self.pool, self.judgements.snapshot(), self.confidence, self.seed)


def open_session(cfg: KadetConfig, data_dir: str | os.PathLike, queries_file: str | os.PathLike,
                 out: str | os.PathLike, s: JudgeSettings, export_to: str | os.PathLike | None = None,
                 force: bool = False, lock=None) -> Session:
    """The pool (resumed or built), the corpus and the answers so far."""
    data_dir = Path(data_dir)
    pool = load_or_build_pool(cfg, data_dir, queries_file, out, s, lock)
    corpus = load_corpus(data_dir).corpus
    default_export = data_dir if data_dir.is_dir() else data_dir.parent
    version, flags = gate_target(cfg, s.candidate)
    return Session(pool=pool, corpus=corpus, judgements=Judgements(Path(out) / JUDGEMENTS_FILE), data_dir=data_dir,
                   export_to=Path(export_to) if export_to else default_export,
                   confidence=cfg.register.confidence, seed=cfg.seed, force=force, gate_version=version, gate_flags=flags)


def gate_target(cfg: KadetConfig, candidate: str) -> tuple[str, str]:
    """For the ``kadet gate`` command an export prints: the registered version the candidate
    folder is (looked up by its fingerprint, only in a local store that exists: judging never
    waits on a server), else ``challenger``; and the flags that reach the same registry (work dir,
    tracking URI without credentials, model name)."""
    from kadet.registry.tracking import tracking_uri

    defaults = KadetConfig()
    flags = "" if cfg.work_dir == defaults.work_dir else f" --work-dir {shlex.quote(str(cfg.work_dir))}"
    if cfg.tracking.tracking_uri:
        flags += f" --set tracking.tracking_uri={shlex.quote(mask_uri(cfg.tracking.tracking_uri))}"
    if cfg.register.model_name != defaults.register.model_name:
        flags += f" --model-name {shlex.quote(cfg.register.model_name)}"
    uri, version = tracking_uri(cfg), "challenger"
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).exists() and Path(candidate).is_dir():
        try:
            from kadet.kit.models import model_fingerprint
            from kadet.registry.register import find_version
            from kadet.registry.tracking import client

            mv = find_version(client(cfg), cfg.register.model_name, model_fingerprint(candidate))
            version = str(mv.version) if mv is not None else version
        except Exception as exc:  # a hint only: never fail the judging for it
            log.debug("no registered version found for %s: %s", candidate, exc)
    return version, flags


# ---------------------------------------------------------------- export


@dataclass
class JudgeExport:
    """What ``kadet judge`` exported (not ``kadet.tools.export.ExportResult``, an exported model)."""

    folder: Path
    queries: int
    new_queries: int
    qrels_rows: int
    status: JudgeStatus
    picks: dict[str, int]
    #: the command that gates the judged candidate on this folder (kadet/registry/promotion.py)
    next_command: str = ""

    def summary(self) -> str:
        d = self.status
        lines = [f"judge: exported {self.queries} judged queries ({self.picks.get('disagreement', 0)} picked for "
                 f"disagreement, {self.picks.get('random', 0)} at random; {d.no_relevant} with no relevant passage), "
                 f"{self.qrels_rows} judgements to {self.folder}/qrels/test.tsv; {self.new_queries} new queries in "
                 f"{self.folder}/queries.jsonl",
                 f"nDCG@10 base {d.base:.4f} -> candidate {d.candidate:.4f} (gain {d.candidate - d.base:+.4f}); "
                 f"paired bootstrap {d.confidence:.0%} interval [{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]",
                 d.message()]
        if self.next_command:
            lines.append(f"next, gate the candidate on these judged queries (promoted if it passes): {self.next_command}")
        return "\n".join(lines)


def merge_queries(path: Path, new: dict[str, str], picks: dict[str, str]) -> tuple[str, int]:
    """The text of ``queries.jsonl`` with ``new`` added (``{qid: text}``, each with its ``judge_pick``
    as metadata): existing lines kept as they are, new ids appended; an existing id with other text
    is an error naming the line. Returns the text and the number of ids added."""
    kept = read_text(path) if path.exists() else ""
    seen: set[str] = set()
    if path.exists():
        for local, lineno, qid, obj in _records(path):
            seen.add(qid)
            if qid in new and obj.get("text") != new[qid]:
                raise DataError(local, f"query {qid!r} exists with other text ({obj.get('text')!r}) than the judged "
                                f"query ({new[qid]!r}); export to another folder with --export-to", lineno, "text")
    if kept and not kept.endswith("\n"):
        kept += "\n"
    added = [json.dumps({"_id": q, "text": t, "metadata": {"judge_pick": picks.get(q, "")}}, ensure_ascii=False) + "\n"
             for q, t in new.items() if q not in seen]
    return kept + "".join(added), len(added)


def export(session: Session, export_to: str | os.PathLike | None = None, force: bool | None = None) -> JudgeExport:
    """Write the completely judged queries as BEIR files into ``export_to`` (default the session's):
    ``qrels/test.tsv`` (grades 0/1/2) and ``queries.jsonl`` (merged); copies the corpus there
    when the folder has none. Refuses to overwrite ``qrels/test.tsv`` unless ``force``."""
    from kadet.kit.data import load_beir

    pool, grades = session.pool, session.judgements.snapshot()
    folder = Path(export_to) if export_to else session.export_to
    force = session.force if force is None else force
    qrels = judged_qrels(pool, grades)
    if not qrels:
        raise KadetError(f"no completely judged query yet in {session.judgements.path}: judge every passage of at "
                         "least one query first")
    bad = [(q, d, g) for q, rels in qrels.items() for d, g in rels.items() if not is_grade(g)]
    if bad:   # validated before anything is written: an export never leaves a half-usable folder
        raise KadetError(f"not exported: {len(bad)} grades are not 0, 1 or 2 (first: query {bad[0][0]!r} passage "
                         f"{bad[0][1]!r} grade {bad[0][2]!r})")
    qrels_path = folder / "qrels" / "test.tsv"
    if qrels_path.exists() and not force:
        raise DataError(qrels_path, "exists; pass --force to overwrite it (its judgements are replaced by these), "
                        "or --export-to another folder")
    texts = {q.qid: q.text for q in pool.queries if q.qid in qrels}
    queries_path = folder / "queries.jsonl"
    picks = {q.qid: q.pick for q in pool.queries}
    merged, n_new = merge_queries(queries_path, texts, picks)
    folder.mkdir(parents=True, exist_ok=True)
    if not any((folder / n).exists() for n in ("corpus.jsonl", "corpus.parquet")):
        src = corpus_file(session.data_dir)
        tmp = folder / f".corpus{src.suffix}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, folder / f"corpus{src.suffix}")
        finally:
            tmp.unlink(missing_ok=True)
    write_text_synced(queries_path, merged)
    rows = [f"{q}\t{d}\t{g}\n" for q, rels in qrels.items() for d, g in rels.items()]
    (folder / "qrels").mkdir(exist_ok=True)
    write_text_synced(qrels_path, "query-id\tcorpus-id\tscore\n" + "".join(rows))
    load_beir(folder, "test")  # cross-check what was written, as every reader will
    counts: dict[str, int] = {}
    for q in qrels:
        counts[picks[q]] = counts.get(picks[q], 0) + 1
    command = f"kadet gate --version {session.gate_version} --data {shlex.quote(str(folder))}{session.gate_flags}"
    return JudgeExport(folder=folder, queries=len(qrels), new_queries=n_new, qrels_rows=len(rows),
                       status=session.status(), picks=counts, next_command=command)


def write_text_synced(path: Path, text: str) -> None:
    """Write a file atomically and durably (unique temp name in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- the web page


def page_state(session: Session) -> dict:
    """Everything the page shows: queries with their passages (no sources, no figures) and the answers."""
    docs = session.corpus
    grades = session.judgements.snapshot()
    return {
        "queries": [{"qid": q.qid, "text": q.text,
                     "docs": [{"id": d, "title": docs[d].title if d in docs else "",
                               "text": docs[d].text if d in docs else "(passage missing from the corpus)"}
                              for d in q.docs]} for q in session.pool.queries],
        "grades": {q.qid: grades.get(q.qid, {}) for q in session.pool.queries},
        "status": session.status().public(),
        "export_to": str(session.export_to),
    }


#: Requests must carry this header: a page on another site cannot add it without a CORS preflight,
#: which this server never grants, so it cannot post answers behind the person's back.
CSRF_HEADER = "X-Kadet-Judge"


class JudgeServer(ThreadingHTTPServer):
    """The page's server: a request that fails outside its handler's own answers (the browser went
    away mid-reply, a socket timed out) is one log line, never a traceback on the console."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("judge page: the client at %s went away: %s", client_address[0], exc)
        else:
            log.error("judge page: a request from %s failed: %s: %s", client_address[0], type(exc).__name__, exc)


def make_server(session: Session, host: str = "127.0.0.1", port: int = 0,
                on_export=None, timeout: float = READ_TIMEOUT) -> ThreadingHTTPServer:
    """A threaded HTTP server for the judging page on ``host:port`` (0: a free port).

    Routes: ``GET /`` the page; ``GET /api/state``; ``POST /api/judge`` ``{"qid", "doc_id",
    "grade"}`` (saved before the reply); ``POST /api/export``. ``on_export(result)`` is called
    after an export from the page (the CLI prints the figures there; the page never shows them).
    A request has ``timeout`` seconds to arrive and at most ``MAX_BODY`` bytes of body.
    """
    if not 0 <= port <= 65535:
        raise KadetError(f"judge: port {port} is out of range (0-65535; 0 picks a free one)")
    handler = type("Handler", (JudgeHandler,), {
        "session": session, "host": host, "on_export": staticmethod(on_export) if on_export else None,
        "timeout": timeout, "html": resources.files("kadet.tools").joinpath("judge.html").read_bytes()})
    try:
        server = JudgeServer((host, port), handler)
    except OSError as exc:
        raise KadetError(f"judge: cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    return server


class JudgeHandler(BaseHTTPRequestHandler):
    """The judging page's requests (see :func:`make_server`, which binds the class attributes)."""

    server_version = "kadet-judge"
    session: Session
    host: str = "127.0.0.1"          # the address served: a Host header may name it
    on_export = None                 # called with the JudgeExport after an export from the page
    html: bytes = b""

    def log_message(self, fmt, *args):  # quiet: one debug line per request
        log.debug("judge: %s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj, status: int = 200) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"))

    def _host_ok(self) -> bool:  # DNS rebinding: only our own address may be asked
        name = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return name in ("127.0.0.1", "localhost", "::1", self.host)

    def do_GET(self):
        self._guarded(self._get)

    def do_POST(self):
        self._guarded(self._post)

    def _guarded(self, route) -> None:
        """Answer the request; a client that left is let go, anything unexpected is a 500 and one
        log line (a traceback only with --verbose), never a dropped connection."""
        try:
            route()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            log.error("judge: %s %.80s failed: %s: %s", self.command, self.path, type(exc).__name__, exc)
            log.debug("judge: the failure", exc_info=True)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._json({"error": f"internal error: {type(exc).__name__}"}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _get(self) -> None:
        if not self._host_ok():
            return self._json({"error": "bad Host header"}, HTTPStatus.FORBIDDEN)
        route = self.path.split("?", 1)[0]
        if route in ("/", "/index.html"):
            return self._send(200, self.html, "text/html; charset=utf-8")
        if route == "/api/state":
            return self._json(page_state(self.session))
        if route == "/api/status":
            return self._json(self.session.status().public())
        return self._json({"error": f"no such page {route[:200]}"}, HTTPStatus.NOT_FOUND)

    def _post(self) -> None:
        if not self._host_ok() or self.headers.get(CSRF_HEADER) != "1":
            self.close_connection = True
            return self._json({"error": f"forbidden: missing {CSRF_HEADER} header"}, HTTPStatus.FORBIDDEN)
        body, error = self._body()
        if error is not None:
            self.close_connection = True
            return self._json({"error": error[1]}, error[0])
        route = self.path.split("?", 1)[0]
        if route == "/api/judge":
            return self._judge(body)
        if route == "/api/export":
            return self._export()
        return self._json({"error": f"no such endpoint {route[:200]}"}, HTTPStatus.NOT_FOUND)

    def _body(self) -> tuple[dict | None, tuple[int, str] | None]:
        """The request's JSON object, or ``(status, message)``: the body is read only when its
        Content-Length is a byte count up to ``MAX_BODY``, and within the handler's ``timeout``."""
        raw = (self.headers.get("Content-Length") or "").strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 12):
            return None, (HTTPStatus.LENGTH_REQUIRED, f"Content-Length must be a byte count, got {raw[:40]!r}")
        length = int(raw)
        if length > MAX_BODY:
            return None, (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
        try:
            data = self.rfile.read(length)
        except (TimeoutError, OSError):
            return None, (HTTPStatus.REQUEST_TIMEOUT, "request body not received in time")
        if len(data) < length:
            return None, (HTTPStatus.BAD_REQUEST, "request body shorter than its Content-Length")
        try:
            body = json.loads(data) if data else {}
        except (ValueError, RecursionError) as exc:   # bad UTF-8 or JSON; nesting too deep
            return None, (HTTPStatus.BAD_REQUEST, f"expected a JSON object: {type(exc).__name__}")
        if not isinstance(body, dict):
            return None, (HTTPStatus.BAD_REQUEST, "expected a JSON object")
        return body, None

    def _judge(self, body: dict) -> None:
        session = self.session
        qid, doc, grade = body.get("qid"), body.get("doc_id"), body.get("grade")
        q = session.pool.query(qid) if isinstance(qid, str) else None
        if q is None or not isinstance(doc, str) or doc not in q.docs:
            return self._json({"error": f"unknown query {qid!r:.80} or passage {doc!r:.80} of it"},
                              HTTPStatus.BAD_REQUEST)
        if not is_grade(grade):
            return self._json({"error": f"grade must be the integer 0, 1 or 2, got {grade!r:.40}"},
                              HTTPStatus.BAD_REQUEST)
        session.judgements.add(qid, doc, grade)
        return self._json({"ok": True, "status": session.status().public()})

    def _export(self) -> None:
        try:
            result = export(self.session)
        except KadetError as exc:
            return self._json({"ok": False, "error": str(exc)}, HTTPStatus.CONFLICT)
        if self.on_export is not None:
            self.on_export(result)
        return self._json({"ok": True, "message": f"exported {result.queries} judged queries to "
                           f"{result.folder} (queries.jsonl, qrels/test.tsv); the figures are in the terminal. "
                           f"Next: {result.next_command}"})


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"
