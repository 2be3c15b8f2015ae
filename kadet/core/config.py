"""The one typed configuration of kadet: every default lives here.

A config is built from the defaults below, then a YAML file, then ``section.key=value``
overrides (the CLI's ``--set``), in that order::

    cfg = load_config("kadet.yaml", overrides=["retrieval.top_k=200"])
    cfg.retrieval.top_k  # 200

Each setting is declared once, with its default, help text and rules (range, choices, the
components it may name: :func:`setting`); the CLI's flag help, :func:`validate` and
:func:`field_docs` read them there, so adding a setting is one field declaration.

Unknown keys, values of the wrong type and values outside a setting's rules raise
:class:`~kadet.core.errors.ConfigError` naming the key and where it came from, when the config is
loaded (before any stage runs).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kadet.core.errors import ConfigError
from kadet.core.io import read_text

DEFAULT_MODEL = "all-MiniLM-L6-v2"

#: What ``label.teacher`` and the members of ``label.ensemble`` may name (kadet/stages/label/teachers.py
#: builds each; an upper-case part stands for any non-empty text, e.g. ``cross-encoder:/models/x``).
TEACHERS = ("dense", "dense:PATH", "bm25", "ql", "ql:MODEL", "cross-encoder:PATH", "monot5:PATH", "rankt5:PATH",
            "ensemble")
ENSEMBLE_MEMBERS = tuple(t for t in TEACHERS if t != "ensemble")
#: What ``mine.retrievers`` may name (kadet/stages/mine.py builds each).
MINE_RETRIEVERS = ("dense", "dense:MODEL", "bm25")

#: The query types an LLM writes (``generate.types`` defaults, in this order); each has its prompt
#: template in kadet/llm/prompts.py, which checks it has one for each.
LLM_TYPES: tuple[str, ...] = ("question", "claim", "keywords", "title", "web", "msmarco")
#: Query types taken from the passage itself, no LLM: ``sentence`` (Inverse Cloze Task style,
#: kadet/stages/generate/extract.py).
EXTRACTED_TYPES: tuple[str, ...] = ("sentence",)
#: Every query type ``generate.types`` may name.
ALL_TYPES: tuple[str, ...] = LLM_TYPES + EXTRACTED_TYPES


def names_component(spec: str, names: tuple[str, ...]) -> bool:
    """Is ``spec`` one of ``names``: a bare name as it is, or ``KIND:ARG`` with a non-empty ARG
    where ``names`` has ``KIND:<PLACEHOLDER>``?"""
    kind, colon, arg = spec.partition(":")
    if not colon:
        return spec in names
    return bool(arg) and any(n.partition(":")[0] == kind and ":" in n for n in names)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING,
            low: float | None = None, above: float | None = None, high: float | None = None,
            names: tuple[str, ...] = (), below: str = "", check: Any = None) -> Any:
    """A setting with its rules beside it, as ``dataclasses.field`` metadata that the CLI's help,
    :func:`validate` and :func:`field_docs` read (a choice among fixed words is its ``Literal`` type):

    - ``low`` / ``above``: the number must be ``>= low`` / ``> above`` (and ``<= high`` if given);
    - ``names``: a component name (a string, each item of a list, each key of a mapping) among
      these (:func:`names_component`); a list also needs at least one;
    - ``below``: the number must be below the sibling setting of that name;
    - ``check(value)``: ``None``, or what is wrong, as the rest of the error after ``'key'``.
    """
    meta: dict[str, Any] = {"help": help}
    if low is not None or above is not None:
        meta["range"] = (low, high, True) if low is not None else (above, high, False)
    meta.update({k: v for k, v in (("names", names), ("below", below), ("check", check)) if v})
    return field(default=default, default_factory=factory, metadata=meta)


class FrozenConfigError(AttributeError):
    """A frozen config's setting was assigned (copy it with ``dataclasses.replace`` instead)."""


def freeze(cfg: Any) -> Any:
    """Freeze ``cfg`` and every section in it, in place; returns it."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            freeze(value)
    object.__setattr__(cfg, "_frozen", True)
    return cfg


class _Section:
    """Every config section: assignment raises once the config is frozen (:func:`freeze`).
    A copy made by ``dataclasses.replace`` is a new, unfrozen object."""

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise FrozenConfigError(f"the run's resolved config is frozen: cannot set {type(self).__name__}.{name}; "
                                    "use dataclasses.replace for a changed copy")
        object.__setattr__(self, name, value)


@dataclass
class DataConfig(_Section):
    """Where the corpus and evaluation data are."""

    data_dir: str = setting("", "A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), local or s3://.")
    split: str = setting("test", "Evaluation split, i.e. the file qrels/<split>.tsv.")
    qrels: str = setting("", "Evaluation qrels file (local or s3://) replacing qrels/<split>.tsv; its relevant "
                             "passages are also excluded from training.")
    title_separator: str = setting(" ", "Passage text = title + separator + text, as BEIR does.")


@dataclass
class RetrievalConfig(_Section):
    """Dense and lexical retrieval settings shared by mining and evaluation."""

    model: str = setting(DEFAULT_MODEL, "A sentence-transformers folder, or a packaged model name "
                                        "(all-MiniLM-L6-v2).")
    retriever: Literal["dense", "bm25", "hybrid"] = setting(
        "dense", "dense, bm25 or hybrid (reciprocal rank fusion of both).")
    top_k: int = setting(100, "Documents retrieved per query.", low=1)
    batch_size: int = setting(128, "At most this many texts per forward pass when encoding.", low=1)
    max_tokens: int | None = setting(None, "Token budget per forward pass (texts x longest); None: 4,096 on CPU, "
                                           "65,536 on GPU.")
    max_seq_length: int | None = setting(None, "Truncate to this many tokens; None keeps the model's own setting.")
    query_prompt: str = setting("", 'Prompt prepended to queries / passages (e.g. "query: " for e5); empty by '
                                    "default.")
    passage_prompt: str = setting("", "Prompt prepended to passages (see query_prompt).")
    device: str | None = setting(None, "cpu, cuda, cuda:1...; None picks CUDA when available.")
    rrf_k: int = setting(60, "Reciprocal rank fusion constant (evaluation's hybrid retriever and mining's fusion).",
                         low=1)
    rrf_depth: int = setting(100, "How many results per retriever go into the fusion.", low=1)
    bm25_method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = setting(
        "lucene", "The BM25 variant (bm25s).")
    bm25_k1: float = setting(1.5, "BM25 term-frequency saturation.", low=0)
    bm25_b: float = setting(0.75, "BM25 length normalisation.", low=0)
    bm25_stemmer: str = setting("english", "Snowball stemmer language for BM25 (empty string disables stemming).")
    bm25_stopwords: str = setting("en", "Stopword list for BM25 (bm25s).")
    embedding_cache: bool = setting(True, "Cache embeddings on disk keyed by model fingerprint and text hash.")
    index: Literal["auto", "exact", "ivf"] = setting(
        "auto", "Dense search when mining: exact (in bounded memory), ivf (a faiss IVF index), or auto: exact below "
                "approximate_from documents, from there IVF with its probes raised until its recall@k against exact "
                "search, measured on 64 of the run's own queries, reaches recall_target (exact when that takes more "
                "than a quarter of the clusters, where IVF stops paying). The mine manifest and the run report say "
                "which searched, and the recall. Evaluation always searches exactly (docs/scale.md).")
    approximate_from: int = setting(500_000, "index=auto searches approximately from this many documents.", low=1)
    nprobe: int = setting(0, "IVF clusters searched per query; 0: calibrated to recall_target.", low=0)
    recall_target: float = setting(0.99, "The recall@k against exact search a calibrated IVF index must reach.",
                                   low=0, high=1)


@dataclass
class EvaluationConfig(_Section):
    """What ``kadet evaluate`` measures."""

    ndcg_k: int = setting(10, "trec_eval measures reported: nDCG@10, Recall@100, MRR@10.", low=1)
    recall_k: int = setting(100, "The k of Recall@k.", low=1)
    mrr_k: int = setting(10, "The k of MRR@k.", low=1)
    ignore_identical_ids: bool = setting(True, "Drop a retrieved document whose id equals the query id (BEIR's "
                                               "default).")
    kind: Literal["auto", "gold", "silver"] = setting(
        "auto", "gold: the corpus's judged queries (qrels/<split>.tsv or data.qrels); silver: held-out synthetic "
                "queries judged by the teacher (label.silver_queries); auto: gold where judged.")
    retriever: Literal["dense", "hybrid"] = setting(
        "dense", "What the gate judges: the candidate as a dense retriever, or in hybrid (its dense run fused with "
                 "BM25 by RRF, as many retrieval stacks serve). Both are always measured and reported.")

    # the one place metric names are spelled (metrics.json, comparison.json, the gate, MLflow)
    @property
    def ndcg(self) -> str:
        return f"ndcg@{self.ndcg_k}"

    @property
    def recall(self) -> str:
        return f"recall@{self.recall_k}"

    @property
    def mrr(self) -> str:
        return f"mrr@{self.mrr_k}"


@dataclass
class PrepareConfig(_Section):
    """Passage selection before query generation."""

    sample_size: int = setting(100_000, "Sample at most this many passages (seeded); 0 keeps all.", low=0)
    min_chars: int = setting(10, "Drop passages whose normalised text is shorter than this.", low=0)
    dedupe: bool = setting(True, "Drop exact and near-duplicates (substring of a sorted neighbour).")
    exclude_splits: list[str] = setting(factory=lambda: ["test"], help="qrels splits of the BEIR folder whose "
                                        "relevant passages are excluded (no test leakage).")
    exclude_qrels: list[str] = setting(factory=list, help="Extra qrels files (paths or s3:// URIs) whose relevant "
                                                          "passages are excluded too.")


@dataclass
class TgiConfig(_Section):
    """``generate.backend: tgi``: a text-generation-inference or OpenAI-compatible endpoint."""

    url: str = setting(factory=lambda: os.environ.get("KADET_TGI_URL") or "http://127.0.0.1:8080",
                       help="Endpoint URL. Default: $KADET_TGI_URL (a cluster pipeline's pods get the TGI Service's "
                            "address from kadet/kubeflow/platform.yaml), else http://127.0.0.1:8080.")
    api: Literal["chat", "text_generation"] = setting(
        "chat", "chat (chat_completion) or text_generation (raw prompts).")
    token_env: str = setting("HF_TOKEN", "Name of the environment variable holding the endpoint token (never logged).")
    concurrency: int = setting(8, "Requests in flight.", low=1)
    timeout_s: float = setting(60.0, "Seconds per request before it counts as a transient failure.", low=0)
    max_retries: int = setting(4, "Retries of a transient failure (5xx, 429, timeout, dropped connection, malformed "
                                  "reply), with exponential backoff from backoff_s up to backoff_max_s.", low=0)
    backoff_s: float = setting(1.0, "First backoff of a retry, in seconds (doubling).", low=0)
    backoff_max_s: float = setting(30.0, "Longest backoff of a retry, in seconds.", low=0)


@dataclass
class CleanConfig(_Section):
    """Rules for each raw generation; re-applied when the stage finalises, so changing them
    needs no new generation."""

    min_chars: int = setting(5, "Length bounds of a kept query (characters, words).", low=0)
    max_chars: int = setting(200, "Longest kept query, in characters.", low=0)
    min_words: int = setting(2, "Shortest kept query, in words.", low=0)
    max_words: int = setting(32, "Longest kept query, in words.", low=0)
    copy_ngram: int = setting(8, "An n-gram of this many words shared with the passage marks a copy.", low=1)
    max_keywords: int = setting(5, "keywords queries keep at most this many keywords.", low=1)


def _query_types_problem(weights: dict[str, float]) -> str | None:
    """What is wrong with ``generate.types`` (a check of :func:`setting`), if anything."""
    unknown = [t for t in weights if t not in ALL_TYPES]
    if unknown:
        return f": unknown query type(s) {unknown} (known: {', '.join(ALL_TYPES)})"
    if not all(math.isfinite(w) and w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        return f" = {weights!r}: weights must be >= 0, at least one > 0"
    return None


@dataclass
class GenerateConfig(_Section):
    """Synthetic query generation (see kadet/stages/generate/ and kadet/llm/prompts.py)."""

    backend: Literal["local", "tgi"] = setting(
        "local", "local (in-process transformers) or tgi (text-generation-inference client).")
    types: dict[str, float] = setting(
        factory=lambda: {t: (0.0 if t == "web" else 1.0) for t in LLM_TYPES}, check=_query_types_problem,
        help="Queries per passage for each type; a fraction is a probability (0.5 = every other passage). web is "
             "zero-shot; the packaged 135M model cannot follow a bare instruction (1 usable output in 8 on SciFact), "
             "so it is off by default: turn it on with a real LLM behind tgi.")
    model: str = setting("smollm2", "Local: smollm2 (packaged GGUF), a .gguf file or a causal-LM folder. tgi: the "
                                    "model name sent to the server.")
    shots: int | None = setting(None, "Few-shot examples per prompt (None: each type's own, 3; web is zero-shot).")
    max_new_tokens: int = setting(48, "At most this many new tokens per generation.", low=1)
    passage_bias: float = setting(1.5, "Local backend: logit bonus for tokens that occur in the passage, which keeps "
                                       "a small model on the passage's topic instead of drifting to the few-shot "
                                       "examples' topics.")
    no_repeat_ngram_size: int = setting(3, "Local backend: forbid repeating an n-gram of the generated text (small "
                                           "models loop otherwise; the prompt is not counted, so terms can still be "
                                           "quoted), penalise repeats.")
    repetition_penalty: float = setting(1.0, "Local backend: penalty of a repeated token (1: none).", low=0)
    max_copy_tokens: int = setting(6, "Local backend: never copy this many passage tokens in a row (0: no limit).")
    temperature: float = setting(0.0, "0 = greedy. The defaults suit the packaged 135M model (measured on 30 SciFact "
                                      "passages x 3 types: 90% usable vs 64% at temperature 0.7 without the three "
                                      "local-only controls above); with a real LLM behind tgi use temperature 0.8 as "
                                      "the paper does.", low=0)
    top_p: float = setting(0.95, "Nucleus sampling: sample among the tokens of this much probability mass.",
                           low=0, high=1)
    max_passage_chars: int = setting(600, "Passages are cut to this many characters in prompts.", low=1)
    max_passages: int = setting(0, "Use only the first N passages (0: all).", low=0)
    batch_size: int = setting(16, "Local backend: prompts per generate() call, and the device (None: CUDA if "
                                  "available).", low=1)
    device: str | None = setting(None, "Local backend: cpu, cuda, cuda:1...; None picks CUDA when available.")
    tgi: TgiConfig = setting(factory=TgiConfig, help="tgi backend: the endpoint and its transport (generate.tgi.*).")
    clean: CleanConfig = setting(factory=CleanConfig, help="Cleaning rules for every raw output (generate.clean.*).")
    flush_every: int = setting(64, "Outputs appended to the log (with fsync) after each group of this many requests.",
                               low=1)
    shard_index: int = setting(0, "Shard by contiguous passage ranges (ParallelFor; shard_range, as labelling "
                                  "does).", low=0, below="num_shards")
    num_shards: int = setting(1, "How many generation shards there are (see shard_index).", low=1)
    progress: bool = setting(True, "Show a progress bar.")


@dataclass
class MineConfig(_Section):
    """Candidate mining: retrievers, round-trip filter, fusion."""

    retrievers: list[str] = setting(factory=lambda: ["dense", "bm25"], names=MINE_RETRIEVERS,
                                    help="dense (retrieval.model), dense:PATH (another dense model), bm25.")
    top_k: int = setting(0, "Candidates retrieved per retriever; 0 = retrieval.top_k.", low=0)
    round_trip_depth: int = setting(20, "Keep a query only if its source passage is in this many top results ...",
                                    low=1)
    round_trip: Literal["any", "all", "off"] = setting("any", "... of any retriever, of all of them, or off.")
    min_candidates: int = setting(20, "A query needs at least this many fused candidates; lists are cut at "
                                      "max_candidates.", low=0)
    max_candidates: int = setting(100, "Fused candidates kept per query.", low=1)


@dataclass
class LabelConfig(_Section):
    """Teacher labelling and the filters that follow it (see kadet/stages/label/stage.py, kadet/stages/label/teachers.py)."""

    teacher: str = setting("ensemble", f"The teacher: {', '.join(TEACHERS)} (see kadet/stages/label/teachers.py).", names=TEACHERS)
    ensemble: dict[str, float] = setting(
        factory=lambda: {"dense": 1.0, "bm25": 0.5, "ql": 0.5}, names=ENSEMBLE_MEMBERS,
        help="Member weights of the ensemble (z-normalised per query). Chosen on SciFact's *train* queries (first "
             "100, base top-20) with `kadet teacher-report --split train --grid ...`: best {dense 1, bm25 0.5, ql "
             "0.5} nDCG@10 0.7324; best without ql 0.7159; base 0.6975.")
    llm_model: str = setting("smollm2", "Causal LM of the ql teacher: smollm2 (packaged), a .gguf file or a folder.")
    max_passage_tokens: int = setting(256, "The ql teacher cuts passages to this many tokens.", low=1)
    batch_size: int = setting(16, "Model teachers (ql, cross-encoder, monot5, rankt5): items per forward pass.",
                              low=1)
    device: str | None = setting(None, "Model teachers (ql, cross-encoder, monot5, rankt5): cpu, cuda...; None "
                                       "picks CUDA when available.")
    rerank_depth: int = setting(100, "How many fused candidates of each query the teacher scores.", low=1)
    consistency: bool = setting(True, "Keep a query only if the teacher ranks its source passage first.")
    min_top_percentile: float = setting(25.0, "Drop queries whose top teacher score is below this percentile of all "
                                              "scores (METHOD.md).", low=0, high=100)
    norm_low_percentile: float = setting(1.0, "Min-max normalise scores with these percentiles of all scores, "
                                              "clamped to [0, 1].", low=0, high=100, below="norm_high_percentile")
    norm_high_percentile: float = setting(99.0, "The upper percentile of the normalisation (see "
                                                "norm_low_percentile).", low=0, high=100)
    list_size: int = setting(20, "Passages kept per query, in teacher order.", low=2)
    dev_fraction: float = setting(0.1, "Share of the labelled queries held out as the training's dev set.",
                                  low=0, high=1)
    silver_queries: int = setting(300, "With silver evaluation: synthetic queries held out of training (at most a "
                                       "fifth of them), judged by the teacher: the source passage is relevant (2), "
                                       "and so is (1) any candidate whose normalised teacher score reaches "
                                       "silver_min_score.", low=0)
    silver_min_score: float = setting(0.9, "See silver_queries.", low=0, high=1)
    shard_index: int = setting(0, "Scoring is sharded by query range: this worker scores shard shard_index of "
                                  "num_shards.", low=0, below="num_shards")
    num_shards: int = setting(1, "How many scoring shards there are (see shard_index).", low=1)
    flush_every: int = setting(32, "Queries scored between appends to the (resumable) score log.", low=1)


def _list_size_problem(size: int) -> str | None:
    """What is wrong with ``distill.list_size`` (a check of :func:`setting`), if anything."""
    return f" = {size}: a list needs 2 passages or more (0 = as labelled)" if size == 1 else None


@dataclass
class DistillConfig(_Section):
    """Training (METHOD.md defaults; see kadet/stages/distill/)."""

    mode: Literal["full", "query"] = setting(
        "full", "full fine-tuning or query-side tuning (frozen document tower, index stays valid).")
    init: Literal["base", "champion"] = setting(
        "base", "Where training starts: base (retrieval.model) or champion, the registry's current champion "
                "(register.champion_alias of register.model_name): in query mode its query tower (the document tower "
                "stays the base model's, so the corpus index stays valid), in full mode the whole model. Without a "
                "usable champion (none yet, another mode, another base model) it starts from the base model and says "
                "why: log, distill manifest (extra.init), MLflow tags.")
    loss: Literal["listwise", "infonce"] = setting(
        "listwise", "listwise (KL + nce_weight x InfoNCE) or infonce (InfoNCE only, the paper's contrast).")
    kl_weight: float = setting(1.0, "Weight of the listwise KL term.", low=0)
    nce_weight: float = setting(0.1, "Weight of the InfoNCE term.", low=0)
    student_temp: float = setting(0.05, "Temperature of the student's list distribution.", above=0)
    teacher_temp: float = setting(0.3, "Temperature of the teacher's target distribution.", above=0)
    auto_teacher_temp: bool = setting(
        False, "Set teacher_temp from the data: the value (on a log grid) at which the teacher's target distributions "
               "are closest (mean KL) to the *base* student's own on the training lists, so the loss asks for a "
               "better order, not a flatter or sharper list. METHOD.md's 0.3 suits bge-base, whose cosines lie close "
               "together; MiniLM's spread more, and 0.3 flattened them.")
    nce_temp: float = setting(0.01, "Temperature of InfoNCE.", above=0)
    fn_threshold: float = setting(0.6, "Hard negatives scoring above this x the query's top teacher score are "
                                       "masked.")
    lr: float = setting(2e-4, "Peak learning rate.", above=0)
    weight_decay: float = setting(0.01, "AdamW weight decay.", low=0)
    warmup_epochs: float = setting(0.5, "Linear warm-up of the learning rate, in epochs.", low=0)
    min_warmup_steps: int = setting(0, "... and at least this many optimizer steps: on a small training set (a "
                                       "few steps per epoch) half an epoch of warm-up is one or two steps at "
                                       "nearly the peak rate, which overshoots before the dev loss is first "
                                       "measured. A run shorter than the warm-up never reaches the peak: a small "
                                       "training set then trains at a rate in proportion to its steps.", low=0)
    final_lr_ratio: float = setting(0.1, "After the warm-up the learning rate decays linearly to this fraction of "
                                         "lr at the last step.", low=0)
    grad_clip: float = setting(1.0, "Clip the gradient norm to this.", low=0)
    epochs: int = setting(30, "Most epochs to train.", low=1)
    patience: int = setting(2, "Stop after this many epochs without a better dev loss.", low=1)
    batch_size: int = setting(4096, "Queries per optimizer step (GradCache makes this independent of memory) ...",
                              low=1)
    chunk_size: int = setting(64, "... and texts per forward pass.", low=1)
    list_size: int = setting(0, "Passages per query used in training, from the top of each labelled list; 0 = the "
                                "whole list as labelled (label.list_size). Fewer makes a full-tuning step cheaper.",
                             check=_list_size_problem)
    query_max_len: int = setting(64, "Queries are cut to this many tokens.", low=1)
    passage_max_len: int = setting(512, "Passages are cut to this many tokens.", low=1)
    max_train_queries: int = setting(0, "Train on at most this many queries (0: all).", low=0)
    base_weight: float = setting(0.0, "WiSE-FT: the saved model is base_weight x base + (1 - base_weight) x tuned, "
                                      "weight by weight (Wortsman et al., 2022). 0 keeps the tuned weights as they "
                                      "are.", low=0, high=1)
    preflight: bool = setting(True, "With judged queries, measure the teacher's lead over the base before "
                                    "training (kadet/stages/preflight.py) and stop, training and registering nothing, "
                                    "unless the lead's 95% interval lies above min_teacher_lead.")
    min_teacher_lead: float = setting(0.0, "See preflight: the least lead (in the gate metric, e.g. nDCG@10) "
                                           "worth distilling.")
    trainer_wait_s: float = setting(86400.0, "On a cluster with gpu_count > 1 (kadet/kubeflow/trainjob.py): the "
                                             "longest the distill task waits for its Kubeflow Trainer job, counted "
                                             "from the job's creation (a retried task does not restart the clock); "
                                             "then the task fails saying which job and in what state (its pods "
                                             "Pending for a GPU, or still training). Keep it below the distill "
                                             "task's timeout in kadet/kubeflow/platform.yaml.", above=0)
    bf16: bool = setting(True, "bfloat16 autocast on CUDA.")
    device: str | None = setting(None, "cpu, cuda, cuda:1...; None picks CUDA when available.")
    progress: bool = setting(True, "Show a progress bar.")


@dataclass
class TrackingConfig(_Section):
    """MLflow tracking (see kadet/registry/tracking.py)."""

    tracking_uri: str = setting("", "Tracking URI; empty = $MLFLOW_TRACKING_URI, else "
                                    "sqlite:///<work_dir>/mlflow.db.")
    experiment: str = setting("kadet", "The MLflow experiment of the runs.")
    sample_queries: int = setting(50, "Synthetic queries logged as a sample artifact of the generate run.", low=0)
    ui_url: str = setting(factory=lambda: os.environ.get("KADET_MLFLOW_UI_URL", ""),
                          help="The MLflow UI's address as people's browsers reach it (https://mlflow.example.com): "
                               "the links in report.html and on the KFP run page point there. Default: "
                               "$KADET_MLFLOW_UI_URL; empty = the tracking URI when it is http(s) (on a cluster an "
                               "in-cluster address, which a browser cannot open).")


@dataclass
class RegisterConfig(_Section):
    """The registry gate (see kadet/registry/register.py)."""

    model_name: str = setting("kadet-embedding", "The registered model's name in the MLflow registry.")
    champion_alias: str = setting("champion", "Alias of the promoted version.")
    challenger_alias: str = setting("challenger", "Alias of the newest version the gate did not promote.")
    ndcg_floor: float = setting(0.1, "The candidate's nDCG@10 must reach this absolute floor ...", low=0, high=1)
    min_delta: float = setting(0.0, "... and the incumbent's nDCG@10 on the same test data plus this delta (the "
                                    "incumbent is the champion, or the base model while there is none) ...", low=0)
    max_recall_drop: float = setting(0.01, "... and its Recall@100 may fall at most this much below the "
                                           "incumbent's.", low=0)
    require_significant_gain: bool = setting(
        True, "... and the paired bootstrap interval (over the evaluation queries) of its nDCG@10 gain over the base "
              "model must lie above 0 at register.confidence: a gain within noise is not a gain. false turns this "
              "test off (the interval is still measured and reported).")
    confidence: float = setting(0.9, "Level of the paired bootstrap interval of the nDCG@10 gain over the base model: "
                                     "the one in comparison.json, the report and the run summary, the one the gate "
                                     "tests (register.require_significant_gain), and the one kadet judge's page "
                                     "decides at.", above=0, high=1)
    silver_promotes: bool = setting(
        False, "Whether a candidate judged only on *silver* queries (held-out synthetic queries judged by the teacher "
               "it learned from) may be promoted. Off: silver measured agreement with the teacher, not retrieval "
               "quality, and promoted models that real queries show are worse (python -m benchmarks.studies.gate); such a "
               "candidate becomes challenger. Judge 30-50 real queries with kadet judge for a gold gate, or set this "
               "true to accept silver.")
    promote_settle_s: float = setting(2.0, "Seconds a promotion waits before reading the champion alias back "
                                           "(compare-and-set; see kadet/registry/register.py promote): longer than a "
                                           "concurrent run's read-to-write window.", low=0)


@dataclass
class RetentionConfig(_Section):
    """What ``kadet prune`` keeps of what grows with every run (see kadet/tools/prune.py)."""

    keep_runs: int = setting(3, "Keep what the newest this many runs left in the work dir (KFP outputs, logs, the "
                                "kept generation and teacher stores they used) and the newest this many refused "
                                "registry versions; never the champion, the newest successful run's stores, or the "
                                "resume logs of runs newer than it.", low=1)  # the newest run's are never pruned
    auto: bool = setting(False, "Prune after every successful kadet run (off: run kadet prune yourself).")


@dataclass
class KadetConfig(_Section):
    """Root of the configuration tree."""

    data: DataConfig = field(default_factory=DataConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    artifact_uri: str = setting("", "Where each pipeline step also publishes its output folder, as "
                                    "<artifact_uri>/<pipeline run>/<step>/ (s3://bucket/prefix or a local folder); "
                                    "empty = only the KFP artifact store holds them.")
    work_dir: str = setting(".kadet", "Working folder for outputs, caches and the local MLflow store.")
    seed: int = setting(42, "Seed of every sampling and shuffling step.")

    @property
    def cache_dir(self) -> Path:
        return Path(self.work_dir) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A stable short hash of every setting, for manifests and cache keys."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _fields(obj: Any, prefix: str = ""):
    """``(dotted key, dataclasses.Field, the dataclass holding it)`` of every setting under the
    dataclass ``obj``, sections (``generate.tgi``) included, each before the settings inside it."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        yield f"{prefix}{f.name}", f, obj
        if dataclasses.is_dataclass(value):
            yield from _fields(value, f"{prefix}{f.name}.")


def _walk(obj: Any, prefix: str = ""):
    """``(dotted key, type hint)`` of every leaf setting under the dataclass ``obj``."""
    hints: dict[type, dict[str, Any]] = {}
    for key, f, owner in _fields(obj, prefix):
        if not dataclasses.is_dataclass(getattr(owner, f.name)):
            if type(owner) not in hints:
                hints[type(owner)] = typing.get_type_hints(type(owner))
            yield key, hints[type(owner)][f.name]


@functools.lru_cache(maxsize=1)
def field_docs() -> dict[str, str]:
    """``{"section.key": help}`` of every setting, from its :func:`setting` declaration: the help
    text of the CLI's config flags, so a setting is described in one place."""
    return {key: f.metadata["help"] for key, f, _ in _fields(KadetConfig()) if f.metadata.get("help")}


def get_path(cfg: Any, key: str) -> Any:
    """The setting at a dotted ``key`` (``generate.tgi.url``)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_path(cfg: Any, key: str, value: Any) -> None:
    *parents, name = key.split(".")
    setattr(get_path(cfg, ".".join(parents)) if parents else cfg, name, value)


#: Allowed values of the settings that are a choice: their ``Literal`` types (one source).
CHOICES: dict[str, tuple[str, ...]] = {
    key: typing.get_args(tp) for key, tp in _walk(KadetConfig()) if typing.get_origin(tp) is Literal
}
#: ``key: (low, high, low_inclusive)`` of the numbers that must lie in a range (high None =
#: unbounded), from the ``low`` / ``above`` / ``high`` of each :func:`setting`.
RANGES: dict[str, tuple[float, float | None, bool]] = {
    key: f.metadata["range"] for key, f, _ in _fields(KadetConfig()) if "range" in f.metadata
}
#: Keys that moved: an old key still works (with a warning) and lands on the new one.
RENAMED: dict[str, str] = {
    **{f"generate.{old}": f"generate.tgi.{new}" for old, new in (
        ("tgi_url", "url"), ("tgi_api", "api"), ("tgi_token_env", "token_env"), ("concurrency", "concurrency"),
        ("timeout_s", "timeout_s"), ("max_retries", "max_retries"), ("backoff_s", "backoff_s"),
        ("backoff_max_s", "backoff_max_s"))},
    **{f"generate.{k}": f"generate.clean.{k}" for k in (
        "min_chars", "max_chars", "min_words", "max_words", "copy_ngram", "max_keywords")},
    "mine.rrf_k": "retrieval.rrf_k",
}


def _own_problem(key: str, value: Any, meta: Any) -> str | None:
    """What is wrong with one setting on its own (choice, range, component names, check), if anything."""
    allowed = CHOICES.get(key)
    if allowed and value not in allowed:
        return f"'{key}' = {value!r} must be one of {', '.join(allowed)}"
    if "range" in meta and value is not None:
        low, high, inclusive = meta["range"]
        if not math.isfinite(value) or (value < low if inclusive else value <= low) or \
                (high is not None and value > high):
            bound = f">= {low}" if inclusive else f"> {low}"
            return f"'{key}' = {value!r} must be {bound}" + (f" and <= {high}" if high is not None else "")
    names = meta.get("names")
    if names and isinstance(value, str) and not names_component(value, names):
        return f"'{key}' = {value!r} must be one of {', '.join(names)}"
    if names and isinstance(value, list) and (not value or not all(names_component(v, names) for v in value)):
        return f"'{key}' = {value!r}: each must be one of {', '.join(names)}, and at least one"
    if names and isinstance(value, dict) and (unknown := [k for k in value if not names_component(k, names)]):
        return f"'{key}': unknown name(s) {unknown} (known: {', '.join(names)})"
    tail = meta["check"](value) if "check" in meta else None
    return f"'{key}'{tail}" if tail else None


def validate(cfg: "KadetConfig", source: str = "config") -> "KadetConfig":
    """Check every setting against the rules its :func:`setting` declares (then the ones that
    depend on a sibling: ``below``); one ConfigError naming the key. ``config_from_text`` (and
    so ``load_config``) calls it on every config it builds, the CLI after its flags."""
    fields = list(_fields(cfg))
    for key, f, owner in fields:
        if problem := _own_problem(key, getattr(owner, f.name), f.metadata):
            raise ConfigError(f"{source}: {problem}")
    for key, f, owner in fields:
        if (below := f.metadata.get("below")) and getattr(owner, f.name) >= getattr(owner, below):
            sibling = key[: -len(f.name)] + below
            raise ConfigError(f"{source}: '{key}' = {getattr(owner, f.name)!r} must be < {sibling} "
                              f"({getattr(owner, below)!r})")
    return cfg


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise a ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        text = _coerce(value, str, key, source)
        if text not in choices:
            raise ConfigError(f"{source}: '{key}' = {value!r} must be one of {', '.join(choices)}")
        return text
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key, source)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a list")
        return [_coerce(v, inner, key, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a mapping")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    return _coerce_scalar(value, tp, key, source)


def _coerce_union(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` as the first member of the union ``tp`` it converts to (``none``/``null``: None)."""
    args = typing.get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in args:
            return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key, source)
        except ConfigError:
            continue
    raise ConfigError(f"{source}: '{key}' = {value!r} is not a valid {tp}")


def _coerce_scalar(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` as a bool, int, float or str (``Any`` and other types: as it is)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{source}: '{key}' = {value!r} must be true or false")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a number")
        try:
            num = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be {tp.__name__}") from None
        if tp is int and isinstance(value, float) and value != num:
            raise ConfigError(f"{source}: '{key}' = {value!r} must be an integer")
        return num
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a string")
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no unquoted as booleans
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a string; YAML read a boolean "
                              f"(on/off/yes/no), so quote it, e.g. \"off\"")
        return str(value)
    return value


#: The old ``register.confidence: 0``: it turned the gate's significance test off, and also made
#: comparison.json's gain interval a 95% one and ``kadet judge`` decide at 90%.
OLD_CONFIDENCE_OFF = ("'register.confidence' = 0 no longer turns the gate's significance test off: read as "
                      "'register.require_significant_gain' = false. 'register.confidence' is now only the level of "
                      "the gain's paired bootstrap interval (> 0; left as it was, default 0.9), for comparison.json "
                      "and kadet judge alike, where 0 used to mean 95% and 90%: set it to 0.95 to keep the 95% "
                      "interval. Write 'register.require_significant_gain: false' instead")


def _migrate_values(out: dict[str, Any], source: str) -> None:
    """Old values that meant something else, mapped onto their settings in ``out`` (in place)."""
    import logging

    register = out.get("register")
    if not isinstance(register, dict) or "confidence" not in register:
        return
    value = register["confidence"]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return
    try:
        off = float(value) == 0
    except ValueError:
        return
    if not off:
        return
    del register["confidence"]
    keep = register.get("require_significant_gain", False)
    if keep is True or (isinstance(keep, str) and keep.lower() in ("true", "yes", "1", "on")):
        raise ConfigError(f"{source}: 'register.confidence' = 0 (the old way to turn the gate's significance test "
                          "off) contradicts 'register.require_significant_gain' = true; drop 'register.confidence' "
                          "or give it a level > 0")
    register["require_significant_gain"] = False
    logging.getLogger(__name__).warning("%s: %s", source, OLD_CONFIDENCE_OFF)


def _migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` with the RENAMED keys moved to their new place and old values mapped onto their
    new settings (:func:`_migrate_values`); a warning names each."""
    import logging

    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    _migrate_values(out, source)
    for old, new in RENAMED.items():
        section, name = old.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            value = out[section].pop(name)
            logging.getLogger(__name__).warning("%s: '%s' is now '%s'", source, old, new)
            cursor = out
            *parents, last = new.split(".")
            for part in parents:
                cursor = cursor.setdefault(part, {})
            cursor[last] = value
    return out


def _apply(obj: Any, data: dict[str, Any], source: str, prefix: str = "") -> None:
    if not prefix:
        data = _migrate(data, source)
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{full}' must be a mapping")
            _apply(current, value, source, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full, source))


def apply_overrides(cfg: KadetConfig, overrides: list[str], source: str = "--set") -> KadetConfig:
    """Apply ``section.key=value`` strings (values parsed as YAML scalars) to ``cfg``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: {item!r}: the value is not valid YAML "
                              f"({getattr(exc, 'problem', None) or exc}); quote it") from None
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # on/off/yes/no: a bool setting still reads it, a string keeps the word
        nested: dict[str, Any] = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _apply(cfg, nested, source)
    return cfg


def with_settings(cfg: KadetConfig, settings: dict[str, Any], source: str = "settings") -> KadetConfig:
    """Set typed values by dotted path (``{"register.ndcg_floor": 0.5}``) on ``cfg``, each checked
    as a config file's would be (type, choices, range): how pipeline parameters become settings,
    with no text in between."""
    for key, value in settings.items():
        nested: dict[str, Any] = {}
        cursor = nested
        *parents, last = key.split(".")
        for part in parents:
            cursor = cursor.setdefault(part, {})
        cursor[last] = value
        _apply(cfg, nested, source)
    return validate(cfg, source)


def resolve_config(profile: str = "", config_yaml: str = "", settings: dict[str, Any] | None = None,
                   source: str = "pipeline config") -> KadetConfig:
    """A run's one config: the ``profile`` (none: the defaults), then ``config_yaml``, then
    ``settings`` by path (:func:`with_settings`). A pipeline run makes it once, in its first task,
    and every task reads that, frozen (:func:`frozen_config`)."""
    cfg = config_from_text(config_yaml, source=source, base=profile_config(profile))
    return with_settings(cfg, settings or {}, source=f"{source} (run parameters)")


def frozen_config(text: str, source: str = "resolved config") -> KadetConfig:
    """The config a run resolved (:func:`dump_config`'s text), read back and frozen: assigning to
    any of its settings raises, so a step cannot change what the other steps see."""
    return freeze(config_from_text(text, source=source))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: KadetConfig | None = None) -> KadetConfig:
    """Defaults (or ``base``), then the YAML file at ``path`` (if any), then ``overrides``: what
    :func:`config_from_text` makes of the file's text."""
    if not path:
        return config_from_text("", overrides, base=base)
    p = Path(path)
    try:
        text = read_text(p)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    return config_from_text(text, overrides, source=str(p), base=base)


#: Packaged profiles (``kadet/core/profiles/<name>.yaml``): ``local`` (CPU, ``kadet run``'s default)
#: and ``gpu`` (METHOD.md's scale; the cluster pipeline's default).
PROFILES = ("local", "gpu")


def profile_text(profile: str = "local") -> tuple[str, str]:
    """``(yaml text, source name)`` of a packaged profile or of a YAML file."""
    from importlib import resources

    if profile in PROFILES:
        return (resources.files("kadet.core").joinpath(f"profiles/{profile}.yaml").read_text(encoding="utf-8"),
                f"kadet/core/profiles/{profile}.yaml")
    path = Path(profile)
    if not path.is_file():
        raise ConfigError(f"profile {profile!r} is neither a packaged profile ({', '.join(PROFILES)}) nor a file")
    return read_text(path), str(path)


def profile_config(profile: str = "") -> KadetConfig:
    """The defaults with a profile applied (no profile: the defaults)."""
    if not profile:
        return KadetConfig()
    text, source = profile_text(profile)
    return config_from_text(text, source=source)


def config_from_text(text: str, overrides: list[str] | None = None, source: str = "config",
                     base: KadetConfig | None = None) -> KadetConfig:
    """Defaults (or ``base``), then a YAML document given as text (a config file's, a profile's,
    a pipeline parameter), then overrides, validated: the one path every config is built on.
    Errors name ``source`` (and the line of a YAML syntax error)."""
    cfg = base if base is not None else KadetConfig()
    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    _apply(cfg, data, source)
    if overrides:
        apply_overrides(cfg, overrides)
    return validate(cfg, source)


def dump_config(cfg: KadetConfig) -> str:
    """The config as YAML, e.g. to save next to a stage's outputs."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
