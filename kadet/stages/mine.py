"""Stage 3, mine: candidate lists for each synthetic query from several retrievers.

For each query of ``queries.jsonl`` every configured retriever (``mine.retrievers``: the base
dense model ``dense``, ``bm25``, and optionally more dense models as ``dense:PATH``) returns its
top ``mine.top_k`` (0: ``retrieval.top_k``). The **round-trip filter** keeps a query only if its source passage is in
the top ``mine.round_trip_depth`` of *any* retriever (or of *each*, ``mine.round_trip=all``;
``off`` disables it). The rankings are fused with reciprocal rank fusion (K = ``retrieval.rrf_k``, 60) and a query
needs at least ``mine.min_candidates`` fused candidates.

Retrieval runs over the prepare stage's clean ``corpus.jsonl``, from which every evaluation
positive was removed, so a leaked test passage cannot appear in a list.

Output ``candidates.jsonl``::

    {"qid", "query", "type", "source_doc_id",
     "candidates": [{"doc_id": str, "rrf": float}, ...]}      # fused order, best first

and ``manifest.json`` (``dropped``: ``round_trip``, ``too_few_candidates``,
``source_not_in_corpus``; ``extra.round_trip_hits``: per retriever; ``extra.dense_index``: per dense
retriever, exact or approximate search, with the approximate index's recall against exact search).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from kadet.core.config import MINE_RETRIEVERS, KadetConfig
from kadet.kit.data import Document, read_corpus, read_records
from kadet.kit.encode import Encoder
from kadet.core.errors import ConfigError
from kadet.core.io import write_jsonl
from kadet.core.manifest import Manifest
from kadet.kit.search import BM25Retriever, DenseRetriever, Run, ranked, reciprocal_rank_fusion
from kadet.core.layout import STAGES, file_in

log = logging.getLogger(__name__)

QUERY_FIELDS = {"text": str, "type": str, "source_doc_id": str}


def build_retrievers(cfg: KadetConfig, corpus: Mapping[str, Document], names: list[str] | None = None) -> dict:
    """``{name: retriever}`` for names like ``dense``, ``dense:/path/to/model`` and ``bm25``."""
    out = {}
    for name in names or cfg.mine.retrievers:
        kind, _, arg = name.partition(":")
        if kind == "dense":
            out[name] = DenseRetriever.from_config(Encoder.from_config(cfg, arg or None), corpus, cfg)
        elif kind == "bm25":
            out[name] = BM25Retriever.from_config(corpus, cfg)
        else:
            raise ConfigError(f"mine.retrievers: unknown retriever {name!r} (use {', '.join(MINE_RETRIEVERS)})")
    return out


def round_trip_ok(source: str, runs: Mapping[str, Run], qid: str, depth: int, mode: str, hits: Counter) -> bool:
    """Is ``source`` in the top ``depth`` of any / each run? Counts hits per retriever."""
    found = []
    for name, run in runs.items():
        ok = source in ranked(run.get(qid, {}))[:depth]
        hits[name] += ok
        found.append(ok)
    if mode == "off":
        return True
    if mode == "any":
        return any(found)
    return all(found)  # "all"; mine.round_trip is a Literal checked at load


def mine_candidates(cfg: KadetConfig, queries: list[dict], corpus: Mapping[str, Document],
                    retrievers: Mapping[str, object], m: Manifest) -> list[dict]:
    """Retrieve, round-trip filter and fuse; returns the candidate records."""
    c = cfg.mine
    texts = {q["qid"]: q["text"] for q in queries}
    runs = {name: r.search(texts, c.top_k or cfg.retrieval.top_k) for name, r in retrievers.items()}
    # Fuse every query's rankings once: fusing inside the loop made the stage quadratic.
    fused_runs = reciprocal_rank_fusion(list(runs.values()), k=cfg.retrieval.rrf_k)
    hits: Counter[str] = Counter()
    rows = []
    for q in queries:
        qid, source = q["qid"], q["source_doc_id"]
        if source not in corpus:
            m.drop("source_not_in_corpus")
            continue
        if not round_trip_ok(source, runs, qid, c.round_trip_depth, c.round_trip, hits):
            m.drop("round_trip")
            continue
        fused = fused_runs.get(qid, {})
        order = ranked(fused)[: c.max_candidates]
        if len(order) < c.min_candidates:
            m.drop("too_few_candidates")
            continue
        rows.append({
            "qid": qid, "query": q["text"], "type": q["type"], "source_doc_id": source,
            "candidates": [{"doc_id": d, "rrf": round(fused[d], 8)} for d in order],
        })
    m.extra["round_trip_hits"] = {name: hits[name] for name in runs}
    # which dense index searched (exact, or approximate with its recall against exact search)
    m.extra["dense_index"] = {name: r.index.info for name, r in retrievers.items()
                           if isinstance(r, DenseRetriever)}
    return rows


def mine(cfg: KadetConfig, queries_path: str | Path, corpus_path: str | Path, output_dir: str | Path) -> Manifest:
    """Run the stage: ``queries.jsonl`` (generate) + ``corpus.jsonl`` (prepare) -> ``candidates.jsonl``."""
    out = Path(output_dir)
    m = Manifest(stage="mine", config_hash=cfg.hash())
    m.add_input("queries", queries_path)
    m.add_input("corpus", corpus_path)
    queries = read_records(queries_path, "qid", QUERY_FIELDS)
    corpus = read_corpus(corpus_path)
    retrievers = build_retrievers(cfg, corpus)
    rows = mine_candidates(cfg, queries, corpus, retrievers, m)
    write_jsonl(file_in(out, "mine", "candidates"), rows)
    by_type = Counter(r["type"] for r in rows)
    m.counts = {"queries": len(queries), "kept": len(rows), "corpus": len(corpus),
                **{f"kept_{t}": n for t, n in sorted(by_type.items())}}
    m.outputs = dict(STAGES["mine"].outputs)
    m.write(out)
    log.info("mine: kept %d of %d queries; dropped %s", len(rows), len(queries), m.dropped)
    return m
