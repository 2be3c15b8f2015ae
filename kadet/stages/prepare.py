"""Stage 1, prepare: clean the corpus, drop near-duplicates, exclude test positives, sample.

The model must never train on a passage that is relevant to an evaluation query, so every
document judged relevant in the given qrels is removed before sampling::

    passages, manifest = select_passages(corpus, excluded_ids, PrepareConfig(sample_size=200))

Writes ``corpus.jsonl`` (the clean corpus that mining searches: no evaluation positives, no
duplicates), ``passages.jsonl`` (the sample queries are generated for; both
``{"_id", "title", "text"}``) and ``manifest.json`` whose ``dropped`` counts ``empty_text`` (documents with no text or title, skipped
with their judgements), ``too_short``, ``exact_duplicate``, ``near_duplicate``, ``eval_relevant``
and ``not_sampled``.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from pathlib import Path

from kadet.core.config import KadetConfig, PrepareConfig
from kadet.stages.fingerprint import corpus_fingerprint, document_digests, inputs_fingerprint, keep_digests
from kadet.kit.data import Document, corpus_file, eval_kind, load_beir, normalise, read_corpus, read_qrels
from kadet.core.io import write_jsonl
from kadet.core.manifest import Manifest
from kadet.core.layout import STAGES



def select_passages(
    corpus: Mapping[str, Document], excluded_ids: Iterable[str], cfg: PrepareConfig, seed: int = 42,
    manifest: Manifest | None = None, title_separator: str = " ",
) -> list[Document]:
    """Filter and sample passages; counts every drop by reason in ``manifest``."""
    m = manifest or Manifest(stage="prepare")
    return sample_passages(clean_corpus(corpus, excluded_ids, cfg, m, title_separator), cfg.sample_size, seed, m)


def clean_corpus(
    corpus: Mapping[str, Document], excluded_ids: Iterable[str], cfg: PrepareConfig, m: Manifest,
    title_separator: str = " ",
) -> list[Document]:
    """The corpus without evaluation positives, too-short passages and (near-)duplicates."""
    excluded = set(excluded_ids)
    keyed: list[tuple[str, str]] = []  # (normalised text, doc id)
    for doc_id, doc in corpus.items():
        if doc_id in excluded:
            m.drop("eval_relevant")
            continue
        norm = normalise(doc.full_text(title_separator))
        if len(norm) < cfg.min_chars:
            m.drop("too_short")
            continue
        keyed.append((norm, doc_id))
    # Near-duplicates: sort the normalised texts; a text equal to, or contained in, its sorted
    # neighbour is dropped (the longer text is kept).
    keyed.sort()
    drop: set[str] = set()
    if cfg.dedupe:
        for (a, ida), (b, idb) in zip(keyed, keyed[1:]):
            if a == b:
                drop.add(idb)
                m.drop("exact_duplicate")
            elif b.startswith(a) or (len(a) >= cfg.min_chars and a in b):
                drop.add(ida)
                m.drop("near_duplicate")
    candidates = {i for _, i in keyed} - drop
    m.counts.update({"corpus": len(corpus), "clean_corpus": len(candidates), "excluded_ids": len(excluded)})
    return [doc for doc_id, doc in corpus.items() if doc_id in candidates]


def sample_passages(docs: list[Document], n: int, seed: int, m: Manifest) -> list[Document]:
    """A seeded sample of ``n`` passages (all when ``n`` is 0), in corpus order: the ``n`` whose
    seeded digest of their id is smallest, so a grown corpus keeps every earlier sampled passage
    that still ranks among the ``n`` (a run over it generates only for the newcomers)."""
    if n and len(docs) > n:
        rank = lambda i: hashlib.sha1(f"{seed}|{docs[i].doc_id}".encode()).digest()  # noqa: E731
        sample = set(heapq.nsmallest(n, range(len(docs)), key=rank))
        m.drop("not_sampled", len(docs) - n)
        docs = [d for i, d in enumerate(docs) if i in sample]
    m.counts["passages"] = len(docs)
    return docs


def excluded_from_qrels(qrels_paths: Iterable[str | Path], corpus: Mapping[str, Document],
                        skipped_doc_ids: Iterable[str] = ()) -> set[str]:
    """Documents judged relevant (score > 0) in any of the given qrels files."""
    ids: set[str] = set()
    for p in qrels_paths:
        for rels in read_qrels(p, corpus_ids=corpus, skipped_doc_ids=set(skipped_doc_ids)).values():
            ids.update(d for d, s in rels.items() if s > 0)
    return ids


def prepare(cfg: KadetConfig, output_dir: str | Path, fingerprint: dict | None = None) -> Manifest:
    """Run the stage on ``cfg.data.data_dir`` (a BEIR folder or a corpus file). ``fingerprint``
    (``{"corpus", "inputs"}``, from the pipeline's fingerprint task; computed here when not given)
    goes into the manifest, and the documents' digests into the work dir's store, for lineage."""
    out = Path(output_dir)
    src = cfg.data.data_dir
    m = Manifest(stage="prepare", config_hash=cfg.hash())
    m.extra["fingerprint"] = fingerprint or fingerprints(cfg)
    empty: list[str] = []
    # silver: the label step holds synthetic queries out for evaluation (read from this manifest)
    m.extra["eval_kind"] = eval_kind(src, cfg.data.split, cfg.data.qrels, cfg.evaluation.kind)
    judged = eval_kind(src, cfg.data.split, cfg.data.qrels) == "gold"   # whatever evaluation.kind forces
    if Path(src).suffix in (".jsonl", ".parquet") or not judged:
        path = corpus_file(src)                         # a corpus alone: no judged queries to keep apart
        corpus = read_corpus(path, empty)
        m.add_input("corpus", src, path)
        qrels_files = [Path(q) for q in [*cfg.prepare.exclude_qrels, *([cfg.data.qrels] if cfg.data.qrels else [])]]
    else:
        ds = load_beir(src, cfg.data.split, cfg.data.qrels or None)
        corpus, empty = ds.corpus, ds.empty_doc_ids
        m.add_input("corpus", src, ds.files["corpus"])
        root = ds.files["corpus"].parent
        # the evaluation split's judgements are always excluded, whatever exclude_splits says
        splits = list(dict.fromkeys([*cfg.prepare.exclude_splits, cfg.data.split]))
        qrels_files = [root / "qrels" / f"{s}.tsv" for s in splits if (root / "qrels" / f"{s}.tsv").exists()]
        qrels_files += [Path(q) for q in cfg.prepare.exclude_qrels]
        if cfg.data.qrels:
            qrels_files.append(ds.files["qrels"])
    for i, q in enumerate(qrels_files):
        m.add_input(f"exclude_qrels_{i}", q)
    keep_digests(cfg.work_dir, m.extra["fingerprint"]["corpus"], document_digests(corpus, cfg.data.title_separator))
    if empty:
        m.drop("empty_text", len(empty))
        m.extra["empty_doc_ids"] = empty[:100]
    excluded = excluded_from_qrels(qrels_files, corpus, empty)
    clean = clean_corpus(corpus, excluded, cfg.prepare, m, cfg.data.title_separator)
    passages = sample_passages(clean, cfg.prepare.sample_size, cfg.seed, m)
    m.outputs = dict(STAGES["prepare"].outputs)
    write_jsonl(out / m.outputs["corpus"], (d.to_json() for d in clean))
    write_jsonl(out / m.outputs["passages"], (d.to_json() for d in passages))
    m.write(out)
    return m


def fingerprints(cfg: KadetConfig) -> dict:
    """``{"corpus": digest, "inputs": digest, "files", "bytes"}`` of the run's corpus (and a qrels
    file kept elsewhere) and of the settings that shape the model (:mod:`kadet.stages.fingerprint`)."""
    qrels = cfg.data.qrels if cfg.data.qrels and not str(cfg.data.qrels).startswith(str(cfg.data.data_dir)) else ""
    fp = corpus_fingerprint(cfg.data.data_dir, qrels)
    return {"corpus": fp["digest"], "inputs": inputs_fingerprint(cfg, fp["digest"]), "files": fp["files"],
            "bytes": fp["bytes"]}
