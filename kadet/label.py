"""Stage 4, label: a teacher scores each candidate list, then the paper's filters.

Scoring is sharded by query range (``label.shard_index`` of ``label.num_shards``) and resumable:
scores are appended per group of queries to ``scores.shard-<i>-of-<n>.jsonl``; a rerun skips
queries already there. :func:`finalise` then reads every shard and applies, in order:

1. **consistency**: keep a query only if the teacher ranks its source passage first;
2. **percentile cut**: drop queries whose top score is below the ``min_top_percentile``-th
   percentile of all scores (of the queries still kept);
3. **normalise**: min-max with the 1st and 99th percentiles of all scores, clamped to [0, 1];
4. **truncate**: keep the top ``list_size`` passages in teacher order;
5. **split**: train/dev 90/10 by query id, seeded.

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

from kadet.config import KadetConfig, LabelConfig
from kadet.data import Document, append_jsonl, read_corpus, read_log, read_records, write_jsonl
from kadet.errors import KadetError
from kadet.manifest import Manifest
from kadet.teachers import build_teacher

log = logging.getLogger(__name__)

CANDIDATE_FIELDS = {"query": str, "type": str, "source_doc_id": str, "candidates": list}


def shard_range(n: int, index: int, shards: int) -> range:
    """Contiguous query range ``[n*i/k, n*(i+1)/k)`` of shard ``i`` of ``k``."""
    if not 0 <= index < shards:
        raise KadetError(f"label: shard_index {index} outside 0..{shards - 1}")
    return range(n * index // shards, n * (index + 1) // shards)


def shard_file(out: Path, index: int, shards: int) -> Path:
    return out / f"scores.shard-{index}-of-{shards}.jsonl"


def score_shard(cfg: KadetConfig, rows: Sequence[dict], corpus: Mapping[str, Document], out: Path,
                teacher=None) -> int:
    """Score this worker's shard of ``rows``; returns how many queries were scored now."""
    lab = cfg.label
    out.mkdir(parents=True, exist_ok=True)
    path = shard_file(out, lab.shard_index, lab.num_shards)
    done = read_log(path)
    mine = [rows[i] for i in shard_range(len(rows), lab.shard_index, lab.num_shards)]
    todo = [r for r in mine if r["qid"] not in done]
    log.info("label shard %d/%d: %d queries, %d to score", lab.shard_index, lab.num_shards, len(mine), len(todo))
    if not todo:
        return 0
    teacher = teacher or build_teacher(lab.teacher, cfg, corpus)
    from tqdm.auto import tqdm

    for s in tqdm(range(0, len(todo), lab.flush_every), desc=f"label {teacher.name}", leave=False):
        chunk = todo[s : s + lab.flush_every]
        lists = [[c["doc_id"] for c in r["candidates"][: lab.rerank_depth]] for r in chunk]
        scores = teacher.score([r["query"] for r in chunk], lists)
        recs = [{"key": r["qid"], "doc_ids": lst, "scores": [round(float(x), 6) for x in sc]}
                for r, lst, sc in zip(chunk, lists, scores)]
        append_jsonl(path, recs)
    return len(todo)


def apply_filters(items: list[dict], lab: LabelConfig, seed: int, m: Manifest) -> list[dict]:
    """The five filters on ``[{qid, source_doc_id, doc_ids, scores, ...}]``; see the module docs."""
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
    n_dev = int(round(len(qids) * lab.dev_fraction))
    dev = set(qids[:n_dev])
    out = []
    for it in kept:
        s = np.clip((np.asarray(it["scores"]) - lo) / span, 0.0, 1.0)
        order = sorted(range(len(s)), key=lambda i: (-it["scores"][i], it["doc_ids"][i]))[: lab.list_size]
        out.append({**it, "split": "dev" if it["qid"] in dev else "train",
                    "doc_ids": [it["doc_ids"][i] for i in order], "norm": [float(s[i]) for i in order]})
    m.counts["train"] = sum(o["split"] == "train" for o in out)
    m.counts["dev"] = len(out) - m.counts["train"]
    return out


def finalise(cfg: KadetConfig, rows: Sequence[dict], corpus: Mapping[str, Document], out: Path,
             m: Manifest) -> Manifest:
    """Merge every shard's scores, filter, normalise, split; write ``labels.jsonl``."""
    lab = cfg.label
    scores: dict[str, dict] = {}
    for i in range(lab.num_shards):
        scores.update(read_log(shard_file(out, i, lab.num_shards)))
    missing = [r["qid"] for r in rows if r["qid"] not in scores]
    if missing:
        raise KadetError(f"label: {len(missing)} queries have no scores yet (e.g. {missing[0]!r}); "
                         f"run every shard 0..{lab.num_shards - 1} first")
    items = [{"qid": r["qid"], "query": r["query"], "type": r["type"], "source_doc_id": r["source_doc_id"],
              "doc_ids": scores[r["qid"]]["doc_ids"], "scores": scores[r["qid"]]["scores"]} for r in rows]
    labelled = apply_filters(items, lab, cfg.seed, m)
    write_jsonl(out / "labels.jsonl", (
        {"qid": it["qid"], "query": it["query"], "type": it["type"], "source_doc_id": it["source_doc_id"],
         "split": it["split"],
         "passages": [{"doc_id": d, "text": corpus[d].full_text(cfg.data.title_separator), "score": round(s, 6)}
                      for d, s in zip(it["doc_ids"], it["norm"])]}
        for it in labelled))
    m.counts.update({"queries": len(rows), "labelled": len(labelled),
                     **{f"labelled_{t}": n for t, n in sorted(Counter(it["type"] for it in labelled).items())}})
    m.outputs = {"labels": "labels.jsonl"}
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
    if score:
        m.counts["scored_now"] = score_shard(cfg, rows, corpus, out, teacher)
    if merge:
        finalise(cfg, rows, corpus, out, m)
    return m


def merge_shards(cfg: KadetConfig, candidates_path: str | Path, corpus_path: str | Path,
                 shard_dirs: Sequence[str | Path], output_dir: str | Path) -> Manifest:
    """Gather the score files of ``label.num_shards`` workers (each in its own folder) into
    ``output_dir`` and merge them: filter, normalise, split, write ``labels.jsonl``."""
    import shutil

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = cfg.label.num_shards
    for d in shard_dirs:
        for f in Path(d).glob(f"scores.shard-*-of-{n}.jsonl"):
            shutil.copyfile(f, out / f.name)
    return label(cfg, candidates_path, corpus_path, out, score=False, merge=True)
