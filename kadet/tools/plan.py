"""``kadet plan``: what a run will do and how long it will take on this machine, before it starts.

The counts are exact where they can be (prepare runs for real into a temporary folder; the
generation requests and sentence queries are planned as generate plans them); the times come
from timed micro-batches of the real parts on this machine, scaled linearly by the counts (every
stage is linear in its inputs, ``benchmarks/speed/scaling.py``):

* task start: a fresh Python importing what a KFP task imports (once per task of the DAG);
* encode: the base model on a sample of passages and of queries (mine, evaluate);
* BM25: index a sample of passages, retrieve for a sample of queries (mine);
* generate: a few requests to the configured LLM backend (none for sentence queries; a TGI
  server is not timed);
* teacher: the configured teacher on a few candidate lists, document embeddings cached as mine
  leaves them (label);
* distill: training steps of ``distill.batch_size`` queries on synthetic lists (distill).

Training queries are an upper bound (the label filters drop some).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kadet.core.config import KadetConfig

#: What a KFP task imports before its stage runs (timed once in a fresh interpreter).
TASK_IMPORTS = "import kadet.kubeflow.steps, kadet.registry.tracking, mlflow, sentence_transformers, torch"


@dataclass
class StagePlan:
    stage: str
    work: str
    seconds: float


@dataclass
class Plan:
    counts: dict[str, Any] = field(default_factory=dict)
    queries_by_type: dict[str, int] = field(default_factory=dict)
    stages: list[StagePlan] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)   # seconds per unit, measured here
    machine: str = ""

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)


def machine() -> str:
    import torch

    device = "cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return f"{os.cpu_count()} cores, {device}"


def _timed(fn, repeat: int = 1) -> float:
    """Seconds per call of ``fn`` (after one untimed warm-up call)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def count_work(cfg: KadetConfig, tmp: Path) -> tuple[dict[str, Any], dict[str, int], list, list[str]]:
    """Counts of everything the run will process, from the real prepare and generate planning."""
    from kadet.kit.data import load_beir, read_corpus
    from kadet.stages.generate import EXTRACTED_TYPES, extract_queries, plan_requests, unsharded
    from kadet.stages.label.stage import silver_holdout_size
    from kadet.stages.prepare import prepare

    t0 = time.perf_counter()
    m = prepare(cfg, tmp / "prepare")
    prepare_s = time.perf_counter() - t0
    passages = list(read_corpus(tmp / "prepare" / "passages.jsonl").values())
    g = cfg.generate
    requests = plan_requests(passages, unsharded(cfg).generate, cfg.seed)
    by_type: dict[str, int] = {}
    for r in requests:
        by_type[r.qtype] = by_type.get(r.qtype, 0) + 1
    planned: list[str] = []
    for kind in EXTRACTED_TYPES:
        if kind in g.types:
            rows = extract_queries(passages, kind, cfg.seed, g.types[kind])
            by_type[kind] = len(rows)
            planned += [r["text"] for r in rows]
    queries = sum(by_type.values())
    depth = cfg.label.rerank_depth
    train = math.floor(queries * (1 - cfg.label.dev_fraction))
    if m.extra.get("eval_kind") == "silver":
        eval_queries = silver_holdout_size(cfg.label.silver_queries, queries)
        train -= eval_queries
    else:
        eval_queries = len(load_beir(cfg.data.data_dir, cfg.data.split, cfg.data.qrels or None).eval_queries())
    batches = math.ceil(max(train, 0) / cfg.distill.batch_size)
    counts = {"documents": m.counts.get("corpus", 0), "clean_corpus": m.counts.get("clean_corpus", 0),
              "passages": len(passages), "llm_requests": len(requests), "queries": queries,
              "candidate_pairs": queries * cfg.retrieval.top_k, "teacher_pairs": queries * depth,
              "train_queries_at_most": max(train, 0), "training_steps": batches * cfg.distill.epochs,
              "eval_queries": eval_queries, "eval_kind": m.extra.get("eval_kind", "gold")}
    counts["prepare_ms_per_document"] = round(1000 * prepare_s / max(1, counts["documents"]), 4)
    return counts, by_type, passages, planned


def measure(cfg: KadetConfig, passages: list, tmp: Path, llm: bool, planned_queries: list[str]) -> dict[str, float]:
    """Seconds per unit of each kind of work, timed here on small real batches (``planned_queries``:
    texts of the run's own queries where they are known before generation, e.g. sentences)."""
    from sentence_transformers import SentenceTransformer

    from kadet.kit.encode import Encoder
    from kadet.kit.models import resolve_model_path
    from kadet.kit.search import BM25Retriever

    rates: dict[str, float] = {}
    rates["task_start"] = _timed(lambda: subprocess.run([sys.executable, "-c", TASK_IMPORTS], check=True,
                                                        capture_output=True))
    rng = random.Random(cfg.seed)
    sample = rng.sample(passages, min(len(passages), 128))
    texts = [d.full_text(cfg.data.title_separator) for d in sample]
    queries = (rng.sample(planned_queries, min(len(planned_queries), len(texts))) if planned_queries
               else [" ".join(t.split()[:12]) for t in texts])
    path = str(resolve_model_path(cfg.retrieval.model))
    rates["model_load"] = _timed(lambda: SentenceTransformer(path, device="cpu", local_files_only=True))
    enc = Encoder.from_config(cfg)
    enc.cache_dir = None
    rates["encode_document"] = _timed(lambda: enc.encode(texts, kind="document")) / len(texts)
    rates["encode_query"] = _timed(lambda: enc.encode(queries, kind="query")) / len(queries)
    corpus = {d.doc_id: d for d in sample}
    rates["bm25_index"] = _timed(lambda: BM25Retriever.from_config(corpus, cfg)) / len(corpus)
    bm25 = BM25Retriever.from_config(corpus, cfg)
    rates["bm25_query"] = _timed(lambda: bm25.search(dict(enumerate(queries)), 10)) / len(queries)
    rates["teacher_fixed"], rates["teacher_document"], rates["teacher_pair"] = time_teacher(cfg, corpus, queries)
    rates.update(time_distill(cfg, sample, queries, tmp))
    rates["llm_request"] = time_llm(cfg, sample) if llm else 0.0
    return rates


def time_teacher(cfg: KadetConfig, corpus: dict, queries: list[str]) -> tuple[float, float, float]:
    """``(fixed seconds, seconds per corpus document, seconds per pair)`` of the label step's
    teacher: building it (models, BM25 index over the corpus) on two corpus sizes gives the fixed
    and per-document parts; scoring lists with the documents' embeddings cached gives per pair."""
    from kadet.stages.label.teachers import build_teacher

    ids = list(corpus)
    half = {d: corpus[d] for d in ids[: len(ids) // 2]}
    t_half = _timed(lambda: build_teacher(cfg.label.teacher, cfg, half))
    t_full = _timed(lambda: build_teacher(cfg.label.teacher, cfg, corpus))
    per_doc = max(0.0, (t_full - t_half) / max(1, len(ids) - len(half)))
    fixed = max(0.0, t_full - per_doc * len(ids))
    teacher = build_teacher(cfg.label.teacher, cfg, corpus)
    ids = list(corpus)
    depth = min(cfg.label.rerank_depth, len(ids))
    lists = [ids[i % len(ids):][:depth] or ids[:depth] for i in range(8)]
    teacher.score(queries[:8], lists)                       # documents encoded once, as mine leaves them
    t0 = time.perf_counter()
    teacher.score(queries[8:16] or queries[:8], lists)
    return fixed, per_doc, (time.perf_counter() - t0) / sum(len(x) for x in lists)


def time_distill(cfg: KadetConfig, sample: list, queries: list[str], tmp: Path) -> dict[str, float]:
    """Distillation's parts: setup (models, document embeddings), one step of ``batch_size``
    queries, the dev loss per dev query, and saving the model and checkpoint each epoch."""
    from kadet.stages.distill import Distiller
    from kadet.core.io import write_jsonl

    lsize = cfg.distill.list_size or cfg.label.list_size
    n = cfg.distill.batch_size
    rows = []
    for i in range(2 * n):
        docs = [sample[(i + j) % len(sample)] for j in range(lsize)]
        rows.append({"qid": f"p{i}", "query": queries[i % len(queries)], "type": "sentence",
                     "source_doc_id": docs[0].doc_id, "split": "dev" if i >= n else "train",
                     "passages": [{"doc_id": d.doc_id, "text": d.full_text(cfg.data.title_separator),
                                   "score": 1.0 - j / lsize} for j, d in enumerate(docs)]})
    path = tmp / "plan-labels.jsonl"
    write_jsonl(path, rows)
    t0 = time.perf_counter()
    d = Distiller(cfg, path, tmp / "plan-distill")
    setup = time.perf_counter() - t0
    step = _timed(lambda: d.train_step(d.train_rows[:n]), repeat=2)
    dev_query = _timed(d.dev_loss) / len(d.dev_rows)
    t0 = time.perf_counter()
    d.save_model(tmp / "plan-distill" / "model")
    d.save_checkpoint()
    return {"distill_setup": setup, "distill_step": step, "distill_dev_query": dev_query,
            "distill_epoch_save": time.perf_counter() - t0}


def time_llm(cfg: KadetConfig, sample: list) -> float:
    from kadet.stages.generate import make_backend, plan_requests, unsharded

    if cfg.generate.backend == "tgi":
        return 0.0                                           # a server elsewhere: not timed from here
    requests = plan_requests(sample[:4], unsharded(cfg).generate, cfg.seed)[:2]
    if not requests:
        return 0.0
    backend = make_backend(cfg)
    return _timed(lambda: backend.generate(requests)) / len(requests)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No library log lines or loading bars while the micro-batches run (warnings still show)."""
    root = logging.getLogger()

    def warnings_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING

    for h in root.handlers:
        h.addFilter(warnings_only)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        hf_logging = None
    try:
        yield
    finally:
        for h in root.handlers:
            h.removeFilter(warnings_only)
        if hf_logging is not None:
            hf_logging.enable_progress_bar()


def make_plan(cfg: KadetConfig, measure_here: bool = True) -> Plan:
    """Counts and (with ``measure_here``) estimated seconds per stage of a local run of ``cfg``."""
    import copy

    with tempfile.TemporaryDirectory() as tmp, quiet():
        work = copy.deepcopy(cfg)
        work.work_dir = tmp                                  # no cache or log of the real work dir touched
        counts, by_type, passages, planned = count_work(work, Path(tmp))
        plan = Plan(counts=counts, queries_by_type=by_type, machine=machine())
        if not measure_here:
            counts.pop("prepare_ms_per_document")
            return plan
        r = plan.rates = measure(work, passages, Path(tmp), counts["llm_requests"] > 0, planned)
        r["prepare_document"] = counts.pop("prepare_ms_per_document") / 1000
    c, g, lab = counts, cfg.generate, cfg.label
    q = c["queries"]
    eval_q = c["eval_queries"]
    dev_q = round(q * lab.dev_fraction)
    # the pre-flight check (gold runs) encodes the corpus first: mine then finds it in the embedding cache
    # (all the documents: it searches the whole corpus, as evaluate does)
    preflight = cfg.distill.preflight and c["eval_kind"] == "gold"
    encode_corpus = c["clean_corpus"] * r["encode_document"]
    tasks = 10 + g.num_shards + lab.num_shards               # the DAG's tasks that import kadet
    rows = [
        ("preflight", f"encode {c['documents']:,} passages, {eval_q * lab.rerank_depth:,} teacher pairs"
         if preflight else ("nothing to measure (silver)" if cfg.distill.preflight else "off (distill.preflight)"),
         c["documents"] * r["encode_document"] + r["teacher_fixed"]
         + eval_q * (r["encode_query"] + lab.rerank_depth * r["teacher_pair"]) if preflight else 0.0),
        ("prepare", f"{c['documents']:,} documents", c["documents"] * r["prepare_document"]),
        ("generate", f"{c['llm_requests']:,} LLM requests, {q:,} queries", c["llm_requests"] * r["llm_request"]),
        ("mine", f"encode {0 if preflight else c['clean_corpus']:,} passages + {q:,} queries, BM25",
         (0.0 if preflight else encode_corpus) + c["clean_corpus"] * r["bm25_index"]
         + q * (r["encode_query"] + r["bm25_query"])),
        ("label", f"{c['teacher_pairs']:,} teacher pairs", lab.num_shards * (r["teacher_fixed"] + c["clean_corpus"]
                                                                               * r["teacher_document"])
         + c["teacher_pairs"] * r["teacher_pair"]),
        ("distill", f"{c['training_steps']:,} steps of {cfg.distill.batch_size}",
         r["distill_setup"] + c["training_steps"] * r["distill_step"]
         + cfg.distill.epochs * (dev_q * r["distill_dev_query"] + r["distill_epoch_save"])),
        ("evaluate", f"{eval_q:,} + {dev_q:,} queries, 2 models",
         2 * (r["model_load"] + (eval_q + dev_q) * r["encode_query"])),
        ("tasks", f"{tasks} task starts (Python, imports, MLflow run)", tasks * r["task_start"]),
    ]
    plan.stages = [StagePlan(s, w, sec) for s, w, sec in rows]
    return plan


def format_plan(plan: Plan, title: str) -> str:
    c = plan.counts
    types = ", ".join(f"{t} {n:,}" for t, n in sorted(plan.queries_by_type.items()))
    lines = [f"{title}",
             f"  {c['passages']:,} passages of {c['documents']:,} documents; queries: {types or 'none'}",
             f"  {c['candidate_pairs']:,} candidate pairs, {c['teacher_pairs']:,} teacher pairs, "
             f"{c['training_steps']:,} training steps (at most {c['train_queries_at_most']:,} training queries); "
             f"evaluation: {c['eval_kind']}, {c['eval_queries']:,} queries"]
    if plan.stages:
        lines.append(f"  estimated on this machine ({plan.machine}):")
        lines += [f"    {s.stage:<9} {s.seconds:7.0f} s   {s.work}" for s in plan.stages]
        lines.append(f"    {'total':<9} {plan.seconds / 60:7.1f} min")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- scale

#: Corpus sizes of the scale table (``kadet plan --scale``).
SCALE_SIZES = (100_000, 1_000_000, 10_000_000)
#: Per-passage costs of every stage on synthetic corpora, written by ``python benchmarks/scale.py
#: --write-costs`` (its machine, date and commit inside).
SCALE_COSTS = Path(__file__).with_name("scale_costs.json")
#: Stages the pipeline shards across pods (generate, label) or can (corpus encoding).
SHARDED = ("generate", "label", "encode corpus")


@dataclass
class ScaleRow:
    profile: str
    passages: int
    stage: str
    seconds: float
    gib: float | None     # None: not estimated (distillation's memory is the model's and the batch's)
    basis: str            # where the figure comes from


def load_scale_costs(path: Path = SCALE_COSTS) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _queries(cfg: KadetConfig, passages: int) -> int:
    """Queries a run generates for a corpus of ``passages``: the sample times the type weights."""
    sample = min(passages, cfg.prepare.sample_size or passages)
    return round(sample * sum(cfg.generate.types.values()))


def scale_rows(profile: str, cfg: KadetConfig, costs: dict, rates: dict[str, float],
               sizes: tuple[int, ...] = SCALE_SIZES) -> list[ScaleRow]:
    """Per-stage seconds and peak GiB of ``cfg`` at each corpus size: the stages' own per-passage
    cost and memory growth from ``costs`` (``benchmarks/scale.py``: a tiny encoder, at most
    ``costs["queries"]`` queries), plus the work that depends on the model and the query count,
    from ``rates`` (seconds per item, :func:`measure`'s names; a rate of 0 or absent is not
    measured, and its rows say so)."""
    from kadet.llm.prompts import EXTRACTED_TYPES

    st = costs["stages"]
    dim, tiny_dim = costs.get("real_dim", 384), costs.get("tiny_dim", 32)
    # exact search per query-passage pair, scaled from the measured dimension to the model's
    measured = costs.get("search", {})
    search = measured.get("exact_s_per_query_passage", 0.0) * dim / measured.get("dim", dim)

    def mem(stage: str, n: int, embeddings: int = 0) -> float:
        c = st[stage]
        return c["fixed_gib"] + c["gib_per_passage"] * n + embeddings * n * (dim - tiny_dim) * 4 / 2**30

    rows: list[ScaleRow] = []
    bench = f"per passage, {costs['machine']}"
    for n in sizes:
        q = _queries(cfg, n)
        extra_q = q - costs["queries"]                          # queries beyond the benchmark's (their search)
        lab, d = cfg.label, cfg.distill
        pairs = q * lab.rerank_depth
        enc = rates.get("encode_document", 0.0)
        steps = math.ceil(q * (1 - lab.dev_fraction) / d.batch_size) * d.epochs
        # a step's time is per query: measured at rates["distill_batch"] queries (the planned run's batch)
        step_s = rates.get("distill_step", 0.0) * d.batch_size / rates.get("distill_batch", d.batch_size)
        llm = rates.get("llm_request", 0.0)
        requests = round(min(n, cfg.prepare.sample_size or n)
                         * sum(w for t, w in cfg.generate.types.items() if t not in EXTRACTED_TYPES))
        rows += [
            ScaleRow(profile, n, "fingerprint", st["fingerprint"]["us_per_passage"] * 1e-6 * n, mem("fingerprint", n),
                     bench),
            ScaleRow(profile, n, "prepare", st["prepare"]["us_per_passage"] * 1e-6 * n, mem("prepare", n), bench),
            ScaleRow(profile, n, "generate", requests * llm, st["generate"]["fixed_gib"],
                     f"{requests:,} LLM requests x {llm:.2f} s" if llm else
                     f"{requests:,} LLM requests; rate not measured here" if requests else "sentence queries"),
            ScaleRow(profile, n, "encode corpus", n * enc, mem("mine", n, 2),
                     f"{n:,} x {enc * 1e3:.1f} ms, the model measured here" if enc else "model rate not measured"),
            ScaleRow(profile, n, "mine", st["mine"]["us_per_passage"] * 1e-6 * n
                     + q * rates.get("encode_query", 0.0) + max(0, extra_q) * n * search, mem("mine", n, 2),
                     f"{q:,} queries; {bench}" + (
                         f"; + exact search of {extra_q:,} more queries than measured at {search * 1e9:.1f} ns a "
                         f"query-passage pair ({costs['search']['source'].split(':')[0]}; an IVF index probing "
                         "p of its clusters: about p of that)" if extra_q > 0 and search else
                         f"; the search of {extra_q:,} more queries than measured: not included" if extra_q > 0
                         else "")),
            ScaleRow(profile, n, "label", st["label"]["us_per_passage"] * 1e-6 * n
                     + pairs * rates.get("teacher_pair", 0.0), mem("label", n),
                     f"{pairs:,} teacher pairs x {rates.get('teacher_pair', 0.0) * 1e3:.2f} ms + {bench}"),
            ScaleRow(profile, n, "distill", steps * step_s, None,
                     f"{steps:,} steps of {d.batch_size}" + ("" if rates.get("distill_step") else ", not measured")),
            ScaleRow(profile, n, "evaluate", st["evaluate"]["us_per_passage"] * 1e-6 * n
                     + (n * enc if d.mode == "full" else 0.0), mem("evaluate", n, 2),
                     ("corpus re-encoded (full tuning); " if d.mode == "full" else "") + bench),
        ]
    return rows


def pods_for(rows: list[ScaleRow], hours: float) -> dict:
    """How many pods the sharded stages (:data:`SHARDED`) need so that the run fits in ``hours``:
    the rest runs once, one pod (``serial_s``); ``pods`` is None when that alone does not fit."""
    sharded = sum(r.seconds for r in rows if r.stage in SHARDED)
    serial = sum(r.seconds for r in rows if r.stage not in SHARDED)
    left = hours * 3600 - serial
    return {"sharded_s": sharded, "serial_s": serial, "hours": hours,
            "pods": max(1, math.ceil(sharded / left)) if left > 0 else None}


def format_scale(rows: list[ScaleRow], costs: dict, machine_here: str, hours: float) -> str:
    lines = [f"at scale (stage costs per passage: python benchmarks/scale.py on {costs['machine']}, "
             f"{costs['date'][:10]}, commit {costs['commit']}; model, teacher, LLM and training rates: "
             f"measured here, {machine_here}):"]
    for profile in dict.fromkeys(r.profile for r in rows):
        for n in dict.fromkeys(r.passages for r in rows if r.profile == profile):
            sel = [r for r in rows if r.profile == profile and r.passages == n]
            total = sum(r.seconds for r in sel)
            lines.append(f"  {profile}, {n:,} passages: {total / 3600:,.1f} h on one machine, "
                         f"peak {max(r.gib or 0 for r in sel):.1f} GiB (distillation's not estimated)")
            lines += [f"    {r.stage:<13} {r.seconds / 3600:8.2f} h "
                      + (f"{r.gib:6.1f} GiB" if r.gib is not None else "     - GiB") + f"   {r.basis}" for r in sel]
            p = pods_for(sel, hours)
            lines.append(f"    under {hours:g} h: " + (
                f"{p['pods']} pod{'s' if p['pods'] != 1 else ''} for generate / label shards and corpus encoding "
                f"({p['sharded_s'] / 3600:,.1f} h "
                f"of work), {p['serial_s'] / 3600:,.1f} h unsharded" if p["pods"] else
                f"not with sharding alone: {p['serial_s'] / 3600:,.1f} h of unsharded work"))
    return "\n".join(lines)
