"""Stage 4, label: a teacher scores each candidate list, then the paper's filters.

Scoring is sharded by query range (``label.shard_index`` of ``label.num_shards``) and resumable:
scores are appended per group of queries to ``scores.shard-<i>-of-<n>.jsonl``; a rerun skips
queries already there (each shard's log is a :class:`~kadet.core.journal.Journal`). :func:`write_labels`
then merges every shard's scores and applies, in order:

1. **consistency**: keep a query only if the teacher ranks its source passage first;
2. **percentile cut**: drop queries whose top score is below the ``min_top_percentile``-th
   percentile of all scores (of the queries still kept);
3. **normalise**: min-max with the 1st and 99th percentiles of all scores, clamped to [0, 1];
4. **truncate**: keep the top ``list_size`` passages in teacher order;
5. **split**: train/dev 90/10 by source passage (a passage's queries stay on one side), seeded.

Output ``labels.jsonl``, one query per line::

    {"qid", "query", "type", "source_doc_id", "split": "train"|"dev",
     "passages": [{"doc_id", "text", "score"}, ...]}          # teacher order, score in [0, 1]

and ``manifest.json`` whose ``dropped`` counts what each filter removed.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from kadet.core.config import KadetConfig, LabelConfig
from kadet.kit.data import Document, read_corpus, read_records
from kadet.core.errors import KadetError
from kadet.core.io import write_jsonl
from kadet.core.journal import Journal, merge_logs
from kadet.core.manifest import Manifest
from kadet.core.layout import STAGES, file_in, shard_range
from kadet.core.reuse import Store, digest

log = logging.getLogger(__name__)

CANDIDATE_FIELDS = {"query": str, "type": str, "source_doc_id": str, "candidates": list}


def shard_file(out: Path, index: int, shards: int) -> Path:
    """The scores log of shard ``index`` of ``shards`` in ``out``."""
    return out / f"scores.shard-{index}-of-{shards}.jsonl"


def teacher_depends(cfg: KadetConfig, corpus_fingerprint: str) -> dict:
    """What a scores log depends on besides each list (checked per record): the teacher's
    settings, its models and the corpus text; a change starts the log over."""
    lab, r = cfg.label, cfg.retrieval
    return {"teacher": lab.teacher, "ensemble": lab.ensemble if lab.teacher == "ensemble" else None,
            "llm_model": lab.llm_model, "max_passage_tokens": lab.max_passage_tokens, "model": r.model,
            "max_seq_length": r.max_seq_length, "prompts": [r.query_prompt, r.passage_prompt],
            "bm25": [r.bm25_method, r.bm25_k1, r.bm25_b, r.bm25_stemmer, r.bm25_stopwords],
            "title_separator": cfg.data.title_separator, "corpus": corpus_fingerprint}


class StoredTeacher:
    """A model teacher whose (query, passage) scores outlive the run (:mod:`kadet.core.reuse`, keyed by
    the query's and the passage's text): only pairs no earlier run scored reach the model. Its
    scores are per pair, so a list mined anew over a grown corpus reuses every pair it shares."""

    def __init__(self, teacher, store: Store, corpus: Mapping[str, Document], title_separator: str = " ",
                 pairs: Sequence[tuple[str, Sequence[str]]] | None = None):
        self.teacher, self.store, self.corpus, self.sep = teacher, store, corpus, title_separator
        self.name = teacher.name
        self.reused = self.scored = 0
        self.pairs = pairs                  # named up front: the first lookup reads them all at once
        self.known: dict[str, float] = {}   # stored or scored now, for every key in covered
        self.covered: set[str] = set()      # keys looked up in the store already

    def _keys(self, queries: Sequence[str], doc_lists: Sequence[Sequence[str]]) -> list[list[str]]:
        return [[digest(q, self.corpus[d].full_text(self.sep)) for d in lst] for q, lst in zip(queries, doc_lists)]

    def _stored(self, keys: list[list[str]]) -> dict[str, float]:
        """The stored scores of ``keys``, reading the store only for keys not looked up before;
        the first call also reads every pair the run named (``pairs``), so a run that names them
        reads the store once, not once per batch (each read costs the store's whole size)."""
        wanted = {k for ks in keys for k in ks}
        if self.pairs:
            wanted |= {k for ks in self._keys(*zip(*self.pairs)) for k in ks}
            self.pairs = None
        outside = wanted - self.covered
        if outside:
            self.known.update(self.store.get(outside))
            self.covered |= outside
        return {k: self.known[k] for ks in keys for k in ks if k in self.known}

    def score(self, queries: Sequence[str], doc_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        keys = self._keys(queries, doc_lists)
        have = self._stored(keys)
        todo = [(i, [d for d, k in zip(lst, ks) if k not in have]) for i, (lst, ks) in enumerate(zip(doc_lists, keys))]
        todo = [(i, missing) for i, missing in todo if missing]
        new: dict[str, float] = {}
        if todo:
            fresh = self.teacher.score([queries[i] for i, _ in todo], [missing for _, missing in todo])
            for (i, missing), scores in zip(todo, fresh):
                new.update({digest(queries[i], self.corpus[d].full_text(self.sep)): float(x)
                            for d, x in zip(missing, scores)})
            self.store.put(new)
            self.known.update(new)
        self.scored += len(new)
        self.reused += sum(len(ks) for ks in keys) - len(new)
        have |= new
        return [np.asarray([have[k] for k in ks], dtype=np.float64) for ks in keys]


def stored_teacher(cfg: KadetConfig, corpus: Mapping[str, Document], corpus_fingerprint: str,
                   pairs: Sequence[tuple[str, Sequence[str]]] | None = None):
    """``build_teacher``'s ``wrap``: each model member keeps its scores in the work dir's store;
    ``pairs``, every (query, passage ids) the run will score, lets each read the store once."""
    depends = {k: v for k, v in teacher_depends(cfg, corpus_fingerprint).items()
               if k not in ("teacher", "ensemble", "corpus")}
    return lambda spec, teacher: StoredTeacher(teacher, Store.open(cfg.work_dir, "teacher", {**depends, "member": spec}),
                                               corpus, cfg.data.title_separator, pairs)


def pair_counts(teacher) -> dict[str, int]:
    """Pairs reused from the store and scored now, over the stored members of ``teacher``."""
    members = getattr(teacher, "members", {"": teacher}).values()
    stored = [t for t in members if isinstance(t, StoredTeacher)]
    return {"pairs_reused": sum(t.reused for t in stored), "pairs_scored": sum(t.scored for t in stored)}


def rerank_list(row: dict, lab: LabelConfig) -> list[str]:
    return [c["doc_id"] for c in row["candidates"][: lab.rerank_depth]]


def logged_scores(done: Mapping[str, dict], row: dict, lab: LabelConfig) -> dict | None:
    """The logged scores of ``row`` if they are for this query text and candidate list."""
    rec = done.get(row["qid"])
    ok = rec is not None and rec.get("query") == row["query"] and rec.get("doc_ids") == rerank_list(row, lab)
    return rec if ok else None


def score_shard(cfg: KadetConfig, rows: Sequence[dict], corpus: Mapping[str, Document], out: Path,
                teacher=None, corpus_fingerprint: str = "", work: dict | None = None) -> int:
    """Score this worker's shard of ``rows``; returns how many queries were scored now and adds
    the teacher pairs reused and scored to ``work``."""
    lab = cfg.label
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(shard_file(out, lab.shard_index, lab.num_shards), teacher_depends(cfg, corpus_fingerprint))
    done = journal.resume()
    mine = [rows[i] for i in shard_range(len(rows), lab.shard_index, lab.num_shards)]
    todo = [r for r in mine if logged_scores(done, r, lab) is None]
    log.info("label shard %d/%d: %d queries, %d to score", lab.shard_index, lab.num_shards, len(mine), len(todo))
    if not todo:
        return 0
    from kadet.stages.label.teachers import build_teacher  # torch: only when there is something to score

    lists = [rerank_list(r, lab) for r in todo]
    teacher = teacher or build_teacher(lab.teacher, cfg, corpus, wrap=stored_teacher(
        cfg, corpus, corpus_fingerprint, pairs=[(r["query"], lst) for r, lst in zip(todo, lists)]))
    from kadet.core.progress import bar

    progress = bar(len(todo), f"label {teacher.name}")
    for s in range(0, len(todo), lab.flush_every):
        chunk, chunk_lists = todo[s : s + lab.flush_every], lists[s : s + lab.flush_every]
        scores = teacher.score([r["query"] for r in chunk], chunk_lists)
        recs = [{"key": r["qid"], "query": r["query"], "doc_ids": lst, "scores": [round(float(x), 6) for x in sc]}
                for r, lst, sc in zip(chunk, chunk_lists, scores)]
        journal.append(recs)
        progress.update(len(chunk))
    progress.close()
    if work is not None:
        work.update(pair_counts(teacher))
    return len(todo)


def apply_filters(items: list[dict], lab: LabelConfig, seed: int, m: Manifest, silver: bool = False) -> list[dict]:
    """The five filters on ``[{qid, source_doc_id, doc_ids, scores, ...}]``; see the module docs.
    With ``silver``, up to ``lab.silver_queries`` kept queries (a fifth at most) become split
    ``silver``, each with ``silver_qrels`` from the teacher's scores of its whole list."""
    kept = []
    for it in items:
        s = np.asarray(it["scores"], dtype=np.float64)
        if len(s) == 0:
            m.drop("no_candidates")
            continue
        if lab.consistency and it["doc_ids"][int(np.argmax(s))] != it["source_doc_id"]:
            m.drop("teacher_inconsistent")
            continue
        kept.append(it)
    if kept and lab.min_top_percentile > 0:
        threshold = np.percentile(np.concatenate([it["scores"] for it in kept]), lab.min_top_percentile)
        before = len(kept)
        kept = [it for it in kept if max(it["scores"]) >= threshold]
        m.drop("low_top_score", before - len(kept))
        m.extra["top_score_threshold"] = float(threshold)
    if not kept:
        return []
    every = np.concatenate([it["scores"] for it in kept])
    lo, hi = np.percentile(every, [lab.norm_low_percentile, lab.norm_high_percentile])
    span = hi - lo if hi > lo else 1.0
    m.extra["normalisation"] = {"low": float(lo), "high": float(hi)}
    qids = sorted(it["qid"] for it in kept)
    random.Random(seed).shuffle(qids)
    held = silver_holdout(kept, silver_holdout_size(lab.silver_queries, len(qids)), seed) if silver else set()
    rest = [q for q in qids if q not in held]
    dev = whole_passages(kept, rest, int(round(len(rest) * lab.dev_fraction)), limit=len(rest) - 1)
    out = []
    for it in kept:
        s = np.clip((np.asarray(it["scores"]) - lo) / span, 0.0, 1.0)
        order = sorted(range(len(s)), key=lambda i: (-it["scores"][i], it["doc_ids"][i]))[: lab.list_size]
        row = {**it, "split": "silver" if it["qid"] in held else "dev" if it["qid"] in dev else "train",
               "doc_ids": [it["doc_ids"][i] for i in order], "norm": [float(s[i]) for i in order]}
        if it["qid"] in held:
            row["silver_qrels"] = {d: 1 for d, x in zip(it["doc_ids"], s) if x >= lab.silver_min_score}
            row["silver_qrels"][it["source_doc_id"]] = 2
        out.append(row)
    for split in ("train", "dev", "silver"):
        m.counts[split] = sum(o["split"] == split for o in out)
    if not silver:
        del m.counts["silver"]
    return out


def silver_holdout_size(wanted: int, queries: int) -> int:
    """How many of ``queries`` kept queries the silver evaluation holds out: ``wanted``
    (``label.silver_queries``), at most a fifth of them."""
    return min(wanted, queries // 5)


def silver_holdout(items: Sequence[dict], n: int, seed: int) -> set[str]:
    """About ``n`` query ids, whole source passages at a time, the passages chosen at random."""
    source = {it["qid"]: it["source_doc_id"] for it in items}
    sources = sorted(set(source.values()))
    random.Random(seed + 1).shuffle(sources)
    rank = {src: i for i, src in enumerate(sources)}
    return whole_passages(items, sorted(source, key=lambda q: (rank[source[q]], q)), n)


def whole_passages(items: Sequence[dict], order: Sequence[str], n: int, limit: int | None = None) -> set[str]:
    """About ``n`` query ids taken in ``order``, each with every other query of ``items`` from its
    source passage, so that no passage has queries on both sides of a split (several queries per
    passage, e.g. the LLM's types or ``generate.types: {sentence: N}``, would otherwise let dev or
    the silver evaluation see passages that training saw). A passage whose queries would take
    the total past ``limit`` is skipped (dev leaves training at least one query). With one query
    per passage it is the first ``n`` of ``order``; with several, a passage with more queries is
    more likely to be taken, as its queries are more of ``order``."""
    source = {it["qid"]: it["source_doc_id"] for it in items}
    by_source: dict[str, list[str]] = {}
    for q in sorted(source):
        by_source.setdefault(source[q], []).append(q)
    taken: set[str] = set()
    for q in order:
        if len(taken) >= n:
            break
        group = [g for g in by_source[source[q]] if g not in taken]
        if limit is None or len(taken) + len(group) <= limit:
            taken.update(group)
    return taken


def prepared_eval_kind(cfg: KadetConfig, corpus_path: str | Path) -> str:
    """``silver`` or ``gold``: what the prepare step that wrote ``corpus_path`` found (its
    manifest), unless ``evaluation.kind`` says silver."""
    if cfg.evaluation.kind == "silver":
        return "silver"
    manifest = Path(corpus_path).parent / "manifest.json"
    return Manifest.read(manifest.parent).extra.get("eval_kind", "gold") if manifest.exists() else "gold"


def write_labels(cfg: KadetConfig, rows: Sequence[dict], corpus: Mapping[str, Document], out: Path,
                 m: Manifest, corpus_fingerprint: str = "", silver: bool = False) -> Manifest:
    """Merge every shard's scores in ``out``, filter, normalise, split; write ``labels.jsonl``."""
    lab = cfg.label
    depends = teacher_depends(cfg, corpus_fingerprint)
    scores = merge_logs((Journal(shard_file(out, i, lab.num_shards), depends) for i in range(lab.num_shards)),
                        missing_ok=True, refuse=lambda i, shard: f"label: {shard.path} was scored for other teacher "
                        f"settings or another corpus than this merge's; rerun shard {i} with the same configuration")
    missing = [r["qid"] for r in rows if logged_scores(scores, r, lab) is None]
    if missing:
        raise KadetError(f"label: {len(missing)} queries have no scores for their current candidate list yet "
                         f"(e.g. {missing[0]!r}); run every shard 0..{lab.num_shards - 1} first")
    items = [{"qid": r["qid"], "query": r["query"], "type": r["type"], "source_doc_id": r["source_doc_id"],
              "doc_ids": scores[r["qid"]]["doc_ids"], "scores": scores[r["qid"]]["scores"]} for r in rows]
    labelled = apply_filters(items, lab, cfg.seed, m, silver=silver)
    m.extra["eval_kind"] = "silver" if silver else "gold"
    write_jsonl(file_in(out, "label", "labels"), (
        {"qid": it["qid"], "query": it["query"], "type": it["type"], "source_doc_id": it["source_doc_id"],
         "split": it["split"],
         "passages": [{"doc_id": d, "text": corpus[d].full_text(cfg.data.title_separator), "score": round(s, 6)}
                      for d, s in zip(it["doc_ids"], it["norm"])],
         **({"silver_qrels": it["silver_qrels"]} if "silver_qrels" in it else {})}
        for it in labelled))
    m.counts.update({"queries": len(rows), "labelled": len(labelled),
                     **{f"labelled_{t}": n for t, n in sorted(Counter(it["type"] for it in labelled).items())}})
    m.outputs = dict(STAGES["label"].outputs)
    m.extra["teacher"] = lab.teacher
    m.extra["ensemble"] = lab.ensemble if lab.teacher == "ensemble" else None
    m.write(out)
    return m


def label(cfg: KadetConfig, candidates_path: str | Path, corpus_path: str | Path, output_dir: str | Path,
          score: bool = True, merge: bool = True, teacher=None) -> Manifest:
    """Run the stage: score this shard (``score``) and/or merge all shards (``merge``)."""
    out = Path(output_dir)
    m = Manifest(stage="label", config_hash=cfg.hash())
    m.add_input("candidates", candidates_path)
    m.add_input("corpus", corpus_path)
    rows = read_records(candidates_path, "qid", CANDIDATE_FIELDS)
    corpus = read_corpus(corpus_path)
    corpus_fp = m.inputs["corpus"]["fingerprint"]
    if score:
        m.counts["scored_now"] = score_shard(cfg, rows, corpus, out, teacher, corpus_fp, m.counts)
        if not merge:  # a shard's own record (the merge writes the stage's)
            m.outputs = {"scores": shard_file(out, cfg.label.shard_index, cfg.label.num_shards).name}
            m.extra["shard"] = f"{cfg.label.shard_index}-of-{cfg.label.num_shards}"
            m.write(out)
    if merge:
        write_labels(cfg, rows, corpus, out, m, corpus_fp, silver=prepared_eval_kind(cfg, corpus_path) == "silver")
    return m


def merge_score_shards(cfg: KadetConfig, candidates_path: str | Path, corpus_path: str | Path,
                       shard_dirs: Sequence[str | Path], output_dir: str | Path) -> Manifest:
    """Gather the score logs of ``label.num_shards`` workers (each in its own folder) into
    ``output_dir`` and merge them: filter, normalise, split, write ``labels.jsonl``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = cfg.label.num_shards
    for d in shard_dirs:
        for i in range(n):
            Journal(shard_file(Path(d), i, n)).copy_into(out)
    return label(cfg, candidates_path, corpus_path, out, score=False, merge=True)
