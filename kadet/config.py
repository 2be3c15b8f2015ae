"""The one typed configuration of kadet: every default lives here.

A config is built from the defaults below, then a YAML file, then ``section.key=value``
overrides (the CLI's ``--set``), in that order::

    cfg = load_config("kadet.yaml", overrides=["retrieval.top_k=200"])
    cfg.retrieval.top_k  # 200

Unknown keys and values of the wrong type raise :class:`~kadet.errors.ConfigError` naming
the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kadet.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@dataclass
class DataConfig:
    """Where the corpus and evaluation data are."""

    #: A BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), local or ``s3://``.
    data_dir: str = ""
    #: Evaluation split, i.e. the file ``qrels/<split>.tsv``.
    split: str = "test"
    #: Evaluation qrels file (local or ``s3://``) replacing ``qrels/<split>.tsv``; its relevant
    #: passages are also excluded from training.
    qrels: str = ""
    #: Passage text = title + separator + text, as BEIR does.
    title_separator: str = " "


@dataclass
class RetrievalConfig:
    """Dense and lexical retrieval settings shared by mining and evaluation."""

    #: A sentence-transformers folder, or a packaged model name (``all-MiniLM-L6-v2``).
    model: str = DEFAULT_MODEL
    #: ``dense``, ``bm25`` or ``hybrid`` (reciprocal rank fusion of both).
    retriever: Literal["dense", "bm25", "hybrid"] = "dense"
    top_k: int = 100
    #: At most this many texts per forward pass when encoding.
    batch_size: int = 128
    #: Token budget per forward pass (texts x longest); ``None``: 4,096 on CPU, 65,536 on GPU.
    max_tokens: int | None = None
    #: Truncate to this many tokens; ``None`` keeps the model's own setting.
    max_seq_length: int | None = None
    #: Prompt prepended to queries / passages (e.g. ``"query: "`` for e5); empty by default.
    query_prompt: str = ""
    passage_prompt: str = ""
    #: ``cpu``, ``cuda``, ``cuda:1``...; ``None`` picks CUDA when available.
    device: str | None = None
    #: Reciprocal rank fusion constant (evaluation's hybrid retriever and mining's fusion).
    rrf_k: int = 60
    #: How many results per retriever go into the fusion.
    rrf_depth: int = 100
    bm25_method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    bm25_k1: float = 1.5
    bm25_b: float = 0.75
    #: Snowball stemmer language for BM25 (empty string disables stemming).
    bm25_stemmer: str = "english"
    bm25_stopwords: str = "en"
    #: Cache embeddings on disk keyed by model fingerprint and text hash.
    embedding_cache: bool = True


@dataclass
class EvaluationConfig:
    """What ``kadet evaluate`` measures."""

    #: trec_eval measures reported: nDCG@10, Recall@100, MRR@10.
    ndcg_k: int = 10
    recall_k: int = 100
    mrr_k: int = 10
    #: Drop a retrieved document whose id equals the query id (BEIR's default).
    ignore_identical_ids: bool = True
    #: gold: the corpus's judged queries (``qrels/<split>.tsv`` or ``data.qrels``); silver: held-out
    #: synthetic queries judged by the teacher (``label.silver_queries``); auto: gold where judged.
    kind: Literal["auto", "gold", "silver"] = "auto"
    #: What the gate judges: the candidate as a dense retriever, or in hybrid (its dense run fused
    #: with BM25 by RRF, as many retrieval stacks serve). Both are always measured and reported.
    retriever: Literal["dense", "hybrid"] = "dense"

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
class PrepareConfig:
    """Passage selection before query generation."""

    #: Sample at most this many passages (seeded); 0 keeps all.
    sample_size: int = 100_000
    #: Drop passages whose normalised text is shorter than this.
    min_chars: int = 10
    #: Drop exact and near-duplicates (substring of a sorted neighbour).
    dedupe: bool = True
    #: qrels splits of the BEIR folder whose relevant passages are excluded (no test leakage).
    exclude_splits: list[str] = field(default_factory=lambda: ["test"])
    #: Extra qrels files (paths or s3:// URIs) whose relevant passages are excluded too.
    exclude_qrels: list[str] = field(default_factory=list)


ALL_QUERY_TYPES = ("question", "claim", "keywords", "title", "web", "msmarco")


@dataclass
class TgiConfig:
    """``generate.backend: tgi``: a text-generation-inference or OpenAI-compatible endpoint."""

    #: Endpoint URL. Default: ``$KADET_TGI_URL`` (a cluster pipeline's pods get the TGI Service's
    #: address from pipelines/platform.yaml), else http://127.0.0.1:8080.
    url: str = field(default_factory=lambda: os.environ.get("KADET_TGI_URL") or "http://127.0.0.1:8080")
    #: ``chat`` (chat_completion) or ``text_generation`` (raw prompts).
    api: Literal["chat", "text_generation"] = "chat"
    #: Name of the environment variable holding the endpoint token (never logged).
    token_env: str = "HF_TOKEN"
    #: Requests in flight.
    concurrency: int = 8
    #: Seconds per request before it counts as a transient failure.
    timeout_s: float = 60.0
    #: Retries of a transient failure (5xx, 429, timeout, dropped connection, malformed reply),
    #: with exponential backoff from backoff_s up to backoff_max_s.
    max_retries: int = 4
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0


@dataclass
class CleanConfig:
    """Rules for each raw generation; re-applied when the stage finalises, so changing them
    needs no new generation."""

    #: Length bounds of a kept query (characters, words).
    min_chars: int = 5
    max_chars: int = 200
    min_words: int = 2
    max_words: int = 32
    #: An n-gram of this many words shared with the passage marks a copy.
    copy_ngram: int = 8
    #: ``keywords`` queries keep at most this many keywords.
    max_keywords: int = 5


@dataclass
class GenerateConfig:
    """Synthetic query generation (see kadet/generate.py and kadet/prompts.py)."""

    #: ``local`` (in-process transformers) or ``tgi`` (text-generation-inference client).
    backend: Literal["local", "tgi"] = "local"
    #: Queries per passage for each type; a fraction is a probability (0.5 = every other passage).
    #: ``web`` is zero-shot; the packaged 135M model cannot follow a bare instruction (1 usable
    #: output in 8 on SciFact), so it is off by default: turn it on with a real LLM behind tgi.
    types: dict[str, float] = field(
        default_factory=lambda: {t: (0.0 if t == "web" else 1.0) for t in ALL_QUERY_TYPES}
    )
    #: Local: ``smollm2`` (packaged GGUF), a ``.gguf`` file or a causal-LM folder.
    #: tgi: the model name sent to the server.
    model: str = "smollm2"
    #: Few-shot examples per prompt (``None``: each type's own, 3; ``web`` is zero-shot).
    shots: int | None = None
    max_new_tokens: int = 48
    #: Local backend: logit bonus for tokens that occur in the passage, which keeps a small
    #: model on the passage's topic instead of drifting to the few-shot examples' topics.
    passage_bias: float = 1.5
    #: Local backend: forbid repeating an n-gram of the generated text (small models loop
    #: otherwise; the prompt is not counted, so terms can still be quoted), penalise repeats.
    no_repeat_ngram_size: int = 3
    repetition_penalty: float = 1.0
    #: Local backend: never copy this many passage tokens in a row (0: no limit).
    max_copy_tokens: int = 6
    #: 0 = greedy. The defaults suit the packaged 135M model (measured on 30 SciFact passages x
    #: 3 types: 90% usable vs 64% at temperature 0.7 without the three local-only controls
    #: above); with a real LLM behind tgi use temperature 0.8 as the paper does.
    temperature: float = 0.0
    top_p: float = 0.95
    #: Passages are cut to this many characters in prompts.
    max_passage_chars: int = 600
    #: Use only the first N passages (0: all).
    max_passages: int = 0
    #: Local backend: prompts per generate() call, and the device (None: CUDA if available).
    batch_size: int = 16
    device: str | None = None
    #: tgi backend: the endpoint and its transport (``generate.tgi.*``).
    tgi: TgiConfig = field(default_factory=lambda: TgiConfig())
    #: Cleaning rules for every raw output (``generate.clean.*``).
    clean: CleanConfig = field(default_factory=lambda: CleanConfig())
    #: Outputs appended to the log (with fsync) after each group of this many requests.
    flush_every: int = 64
    #: Shard by contiguous passage ranges (ParallelFor; ``shard_range``, as labelling does).
    shard_index: int = 0
    num_shards: int = 1
    progress: bool = True


@dataclass
class MineConfig:
    """Candidate mining: retrievers, round-trip filter, fusion."""

    #: ``dense`` (retrieval.model), ``dense:PATH`` (another dense model), ``bm25``.
    retrievers: list[str] = field(default_factory=lambda: ["dense", "bm25"])
    #: Candidates retrieved per retriever; 0 = retrieval.top_k.
    top_k: int = 0
    #: Keep a query only if its source passage is in this many top results ...
    round_trip_depth: int = 20
    #: ... of ``any`` retriever, of ``all`` of them, or ``off``.
    round_trip: Literal["any", "all", "off"] = "any"
    #: A query needs at least this many fused candidates; lists are cut at max_candidates.
    min_candidates: int = 20
    max_candidates: int = 100


@dataclass
class LabelConfig:
    """Teacher labelling and the filters that follow it (see kadet/label.py, kadet/teachers.py)."""

    #: dense, bm25, ql, cross-encoder:PATH, monot5:PATH, rankt5:PATH or ensemble.
    teacher: str = "ensemble"
    #: Member weights of the ensemble (z-normalised per query). Chosen on SciFact's *train*
    #: queries (first 100, base top-20) with `kadet teacher-report --split train --grid ...`:
    #: best {dense 1, bm25 0.5, ql 0.5} nDCG@10 0.7324; best without ql 0.7159; base 0.6975.
    ensemble: dict[str, float] = field(default_factory=lambda: {"dense": 1.0, "bm25": 0.5, "ql": 0.5})
    #: Causal LM of the ql teacher: smollm2 (packaged), a .gguf file or a folder.
    llm_model: str = "smollm2"
    max_passage_tokens: int = 256
    batch_size: int = 16
    device: str | None = None
    #: How many fused candidates of each query the teacher scores.
    rerank_depth: int = 100
    #: Keep a query only if the teacher ranks its source passage first.
    consistency: bool = True
    #: Drop queries whose top teacher score is below this percentile of all scores (METHOD.md).
    min_top_percentile: float = 25.0
    #: Min-max normalise scores with these percentiles of all scores, clamped to [0, 1].
    norm_low_percentile: float = 1.0
    norm_high_percentile: float = 99.0
    #: Passages kept per query, in teacher order.
    list_size: int = 20
    dev_fraction: float = 0.1
    #: With silver evaluation: synthetic queries held out of training (at most a fifth of them),
    #: judged by the teacher: the source passage is relevant (2), and so is (1) any candidate
    #: whose normalised teacher score reaches ``silver_min_score``.
    silver_queries: int = 300
    silver_min_score: float = 0.9
    #: Scoring is sharded by query range: this worker scores shard shard_index of num_shards.
    shard_index: int = 0
    num_shards: int = 1
    #: Queries scored between appends to the (resumable) score log.
    flush_every: int = 32


@dataclass
class DistillConfig:
    """Training (METHOD.md defaults; see kadet/distill.py)."""

    #: ``full`` fine-tuning or ``query``-side tuning (frozen document tower, index stays valid).
    mode: Literal["full", "query"] = "full"
    #: Where training starts: ``base`` (retrieval.model) or ``champion``, the registry's current
    #: champion (register.champion_alias of register.model_name): in query mode its query tower
    #: (the document tower stays the base model's, so the corpus index stays valid), in full mode
    #: the whole model. Without a usable champion (none yet, another mode, another base model) it
    #: starts from the base model and says why: log, distill manifest (extra.init), MLflow tags.
    init: Literal["base", "champion"] = "base"
    #: ``listwise`` (KL + nce_weight x InfoNCE) or ``infonce`` (InfoNCE only, the paper's contrast).
    loss: Literal["listwise", "infonce"] = "listwise"
    kl_weight: float = 1.0
    nce_weight: float = 0.1
    student_temp: float = 0.05
    teacher_temp: float = 0.3
    #: Set ``teacher_temp`` from the data: the value (on a log grid) at which the teacher's target
    #: distributions are closest (mean KL) to the *base* student's own on the training lists, so
    #: the loss asks for a better order, not a flatter or sharper list. METHOD.md's 0.3 suits
    #: bge-base, whose cosines lie close together; MiniLM's spread more, and 0.3 flattened them.
    auto_teacher_temp: bool = False
    nce_temp: float = 0.01
    #: Hard negatives scoring above this x the query's top teacher score are masked.
    fn_threshold: float = 0.6
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    final_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    epochs: int = 30
    patience: int = 2
    #: Queries per optimizer step (GradCache makes this independent of memory) ...
    batch_size: int = 4096
    #: ... and texts per forward pass.
    chunk_size: int = 64
    #: Passages per query used in training, from the top of each labelled list; 0 = the whole
    #: list as labelled (label.list_size). Fewer makes a full-tuning step cheaper.
    list_size: int = 0
    query_max_len: int = 64
    passage_max_len: int = 512
    max_train_queries: int = 0
    #: WiSE-FT: the saved model is ``base_weight x base + (1 - base_weight) x tuned``, weight by
    #: weight (Wortsman et al., 2022). 0 keeps the tuned weights as they are.
    base_weight: float = 0.0
    bf16: bool = True
    device: str | None = None
    progress: bool = True


@dataclass
class TrackingConfig:
    """MLflow tracking (see kadet/tracking.py)."""

    #: Tracking URI; empty = ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<work_dir>/mlflow.db``.
    tracking_uri: str = ""
    experiment: str = "kadet"
    #: Synthetic queries logged as a sample artifact of the generate run.
    sample_queries: int = 50


@dataclass
class RegisterConfig:
    """The registry gate (see kadet/register.py)."""

    model_name: str = "kadet-embedding"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    #: The candidate's nDCG@10 must reach this absolute floor ...
    ndcg_floor: float = 0.1
    #: ... and the incumbent's nDCG@10 on the same test data plus this delta (the incumbent is
    #: the champion, or the base model while there is none) ...
    min_delta: float = 0.0
    #: ... and its Recall@100 may fall at most this much below the incumbent's.
    max_recall_drop: float = 0.01
    #: ... and, with a confidence > 0, the paired bootstrap interval (over the evaluation
    #: queries) of its nDCG@10 gain over the base model must lie above 0 at this level: a gain
    #: within noise is not a gain. 0 turns the test off.
    confidence: float = 0.9
    #: Whether a candidate judged only on *silver* queries (held-out synthetic queries judged by
    #: the teacher it learned from) may be promoted. Off: silver measured agreement with the
    #: teacher, not retrieval quality, and promoted models that real queries show are worse
    #: (``python benchmarks/gate.py``); such a candidate becomes challenger. Judge 30-50 real
    #: queries with ``kadet judge`` for a gold gate, or set this true to accept silver.
    silver_promotes: bool = False
    #: Seconds a promotion waits before reading the champion alias back (compare-and-set; see
    #: kadet/register.py ``promote``): longer than a concurrent run's read-to-write window.
    promote_settle_s: float = 2.0


@dataclass
class RetentionConfig:
    """What ``kadet prune`` keeps of what grows with every run (see kadet/retention.py)."""

    #: Keep what the newest this many runs left in the work dir (KFP outputs, logs, the kept
    #: generation and teacher stores they used) and the newest this many refused registry
    #: versions; never the champion, the newest successful run's stores, or the resume logs
    #: of runs newer than it.
    keep_runs: int = 3
    #: Prune after every successful ``kadet run`` (off: run ``kadet prune`` yourself).
    auto: bool = False


@dataclass
class KadetConfig:
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
    #: Where each pipeline step also publishes its output folder, as
    #: ``<artifact_uri>/<pipeline run>/<step>/`` (``s3://bucket/prefix`` or a local folder);
    #: empty = only the KFP artifact store holds them.
    artifact_uri: str = ""
    #: Working folder for outputs, caches and the local MLflow store.
    work_dir: str = ".kadet"
    seed: int = 42

    @property
    def cache_dir(self) -> Path:
        return Path(self.work_dir) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A stable short hash of every setting, for manifests and cache keys."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def field_docs() -> dict[str, str]:
    """``{"section.key": doc}`` from the ``#:`` comments above each setting in this file: the
    help text of the CLI's config flags, so a setting is described in one place."""
    import inspect
    import re

    paths = {type(get_path(KadetConfig(), k.rsplit(".", 1)[0])).__name__: k.rsplit(".", 1)[0]
             for k, _ in _walk(KadetConfig()) if "." in k}
    docs, section, pending = {}, None, []
    for line in inspect.getsource(sys.modules[__name__]).splitlines():
        if m := re.match(r"class (\w+Config)\b", line):
            section, pending = paths.get(m.group(1)), []
        elif m := re.match(r"    #: ?(.*)", line):
            pending.append(m.group(1))
        elif (m := re.match(r"    (\w+): [^=]+=", line)) and section:
            if pending:
                docs[f"{section}.{m.group(1)}"] = " ".join(pending).replace("``", "")
            pending = []
        elif not line.strip().startswith("#"):
            pending = []
    return docs


def _walk(obj: Any, prefix: str = ""):
    """``(dotted key, type hint)`` of every leaf setting under the dataclass ``obj``."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name]


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


#: ``key: (low, high, low_inclusive)``: numbers must lie in the range (high None = unbounded).
RANGES: dict[str, tuple[float, float | None, bool]] = {
    **{k: (1, None, True) for k in (
        "retrieval.top_k", "retrieval.batch_size", "retrieval.rrf_k", "retrieval.rrf_depth", "evaluation.ndcg_k",
        "evaluation.recall_k", "evaluation.mrr_k", "generate.max_new_tokens", "generate.max_passage_chars",
        "generate.batch_size", "generate.tgi.concurrency", "generate.flush_every", "generate.num_shards",
        "generate.clean.copy_ngram", "generate.clean.max_keywords", "mine.round_trip_depth", "mine.max_candidates", "label.batch_size",
        "label.rerank_depth", "label.max_passage_tokens", "label.num_shards", "label.flush_every",
        "distill.epochs", "distill.patience", "distill.batch_size", "distill.chunk_size", "distill.query_max_len",
        "distill.passage_max_len")},
    **{k: (0, None, True) for k in (
        "prepare.sample_size", "prepare.min_chars", "generate.max_passages", "generate.shard_index",
        "label.shard_index", "mine.min_candidates", "distill.max_train_queries", "distill.kl_weight",
        "distill.nce_weight", "distill.weight_decay", "distill.warmup_epochs", "distill.final_lr_ratio",
        "distill.grad_clip", "generate.temperature", "generate.tgi.timeout_s", "generate.tgi.backoff_s",
        "generate.tgi.backoff_max_s", "generate.tgi.max_retries", "generate.clean.min_chars",
        "generate.clean.max_chars", "generate.clean.min_words", "generate.clean.max_words", "mine.top_k",
        "tracking.sample_queries", "label.silver_queries", "register.min_delta", "register.max_recall_drop",
        "retrieval.bm25_k1", "retrieval.bm25_b", "generate.repetition_penalty", "register.promote_settle_s")},
    **{k: (0, None, False) for k in ("distill.lr", "distill.student_temp", "distill.teacher_temp", "distill.nce_temp")},
    **{k: (0, 100, True) for k in ("label.min_top_percentile", "label.norm_low_percentile",
                                   "label.norm_high_percentile")},
    **{k: (0, 1, True) for k in ("distill.base_weight", "register.ndcg_floor", "generate.top_p",
                                 "label.dev_fraction", "label.silver_min_score")},
    "label.list_size": (2, None, True),
    "retention.keep_runs": (1, None, True),   # the newest run's outputs are never pruned
    "register.confidence": (0, 1, True),   # 0 = no paired test
}


def validate(cfg: "KadetConfig", source: str = "config") -> "KadetConfig":
    """Check ranges, choices and the settings that depend on each other; one ConfigError naming
    the key. ``load_config`` and ``config_from_text`` call it on every config they build."""
    for key, allowed in CHOICES.items():
        if get_path(cfg, key) not in allowed:
            raise ConfigError(f"{source}: '{key}' = {get_path(cfg, key)!r} must be one of {', '.join(allowed)}")
    for key, (low, high, inclusive) in RANGES.items():
        v = get_path(cfg, key)
        if v is None:
            continue
        if not math.isfinite(v) or (v < low if inclusive else v <= low) or (high is not None and v > high):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{source}: '{key}' = {v!r} must be {bound}" + (f" and <= {high}" if high is not None else ""))
    for section in ("generate", "label"):
        c = getattr(cfg, section)
        if c.shard_index >= c.num_shards:
            raise ConfigError(f"{source}: '{section}.shard_index' = {c.shard_index} must be < "
                              f"{section}.num_shards ({c.num_shards})")
    unknown = [r for r in cfg.mine.retrievers if r.partition(":")[0] not in ("dense", "bm25")]
    if unknown or not cfg.mine.retrievers:
        raise ConfigError(f"{source}: 'mine.retrievers' = {cfg.mine.retrievers!r}: each must be dense, "
                          "dense:MODEL or bm25, and at least one")
    known = (*ALL_QUERY_TYPES, "sentence")
    unknown = [t for t in cfg.generate.types if t not in known]
    if unknown:
        raise ConfigError(f"{source}: 'generate.types': unknown query type(s) {unknown} (known: {', '.join(known)})")
    if not all(math.isfinite(w) and w >= 0 for w in cfg.generate.types.values()) or \
            not any(w > 0 for w in cfg.generate.types.values()):
        raise ConfigError(f"{source}: 'generate.types' = {cfg.generate.types!r}: weights must be >= 0, at least one > 0")
    if cfg.distill.list_size == 1:
        raise ConfigError(f"{source}: 'distill.list_size' = 1: a list needs 2 passages or more (0 = as labelled)")
    if cfg.label.norm_low_percentile >= cfg.label.norm_high_percentile:
        raise ConfigError(f"{source}: 'label.norm_low_percentile' must be below 'label.norm_high_percentile'")
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
    if tp is Any:
        return value
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


def _migrate(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` with the RENAMED keys moved to their new place (a warning names each)."""
    import logging

    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: KadetConfig | None = None) -> KadetConfig:
    """Defaults (or ``base``), then the YAML file at ``path`` (if any), then ``overrides``."""
    cfg = base if base is not None else KadetConfig()
    if path:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{line}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        _apply(cfg, data, str(p))
    if overrides:
        apply_overrides(cfg, overrides)
    return validate(cfg, str(path) if path else "config")


#: Packaged profiles (``kadet/profiles/<name>.yaml``): ``local`` (CPU, ``kadet run``'s default)
#: and ``gpu`` (METHOD.md's scale; the cluster pipeline's default).
PROFILES = ("local", "gpu")


def profile_text(profile: str = "local") -> tuple[str, str]:
    """``(yaml text, source name)`` of a packaged profile or of a YAML file."""
    from importlib import resources

    if profile in PROFILES:
        return (resources.files("kadet").joinpath(f"profiles/{profile}.yaml").read_text(encoding="utf-8"),
                f"kadet/profiles/{profile}.yaml")
    path = Path(profile)
    if not path.is_file():
        raise ConfigError(f"profile {profile!r} is neither a packaged profile ({', '.join(PROFILES)}) nor a file")
    return path.read_text(encoding="utf-8"), str(path)


def profile_config(profile: str = "") -> KadetConfig:
    """The defaults with a profile applied (no profile: the defaults)."""
    if not profile:
        return KadetConfig()
    text, source = profile_text(profile)
    return config_from_text(text, source=source)


def config_from_text(text: str, overrides: list[str] | None = None, source: str = "config",
                     base: KadetConfig | None = None) -> KadetConfig:
    """Defaults (or ``base``), then a YAML document given as text (e.g. a pipeline parameter),
    then overrides."""
    cfg = base if base is not None else KadetConfig()
    try:
        data = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    _apply(cfg, data, source)
    if overrides:
        apply_overrides(cfg, overrides)
    return validate(cfg, source)


def dump_config(cfg: KadetConfig) -> str:
    """The config as YAML, e.g. to save next to a stage's outputs."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
