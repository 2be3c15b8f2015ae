"""Stage 2, generate: synthetic queries of several types for each selected passage.

Backends (``generate.backend``):

``local``  in-process, batched ``transformers`` generation with the packaged SmolLM2-135M-
           Instruct GGUF (dequantised once, cached as safetensors under the work dir). Raw
           few-shot prompts, generation stops at a newline. The embedded default.
``tgi``    ``huggingface_hub.AsyncInferenceClient`` against a text-generation-inference (or
           any OpenAI-compatible) endpoint: ``chat_completion`` for instruct models or
           ``text_generation`` for raw prompts; bounded concurrency, per-call timeout, retries
           with exponential backoff on 5xx, 429, timeouts, dropped connections and malformed
           replies. The token is read from the environment variable named by
           ``generate.tgi.token_env`` and never logged.

Resumable: every finished output (kept or dropped) is appended, in batches with fsync, to
``generations.jsonl`` keyed by ``(passage id, type, k)``. A rerun skips keys already there, so
a crash never duplicates or loses a finished query. When all keys are done the stage writes

``queries.jsonl``  ``{qid, text, type, source_doc_id, backend, model, prompt_id}``
``manifest.json``  counts, and every dropped output by reason (``empty``, ``refusal``,
                   ``too_short``, ``too_long``, ``copy_of_passage``, ``duplicate``, ...)

``queries.jsonl`` is rebuilt from the raw outputs in the log on every run, so a change of the
cleaning rules applies without generating again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kadet.config import CleanConfig, GenerateConfig, KadetConfig
from kadet.data import (Document, append_jsonl, normalise, read_corpus, read_log, resume_log, write_jsonl,
                        written_for)
from kadet.models import resolve_device
from kadet.errors import ConfigError, KadetError
from kadet.manifest import Manifest
from kadet.prompts import EXAMPLE_PASSAGES, QUERY_TYPES, QueryType
from kadet.stages import STAGES, file_in, shard_range
from kadet.store import Store

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- cleaning

_PREFIX = re.compile(
    r"^\s*(?:(?:\d+[.)]|[-*•])\s+)?(?:\*\*)?\s*(?:search\s+query|web\s+query|query|question|claim|title|"
    r"keywords?|answer|output|q)\s*(?:\d+)?\s*[:：\-–]\s*(?:\*\*)?\s*",
    re.IGNORECASE,
)
_QUOTES = "\"'`“”‘’«»*_ "
_REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i can(?:not|'t)|i am unable|i'?m unable|as an ai|"
    r"as a language model|i do not have|i don't have|not able to (?:help|provide)|cannot (?:help|provide))\b",
    re.IGNORECASE,
)
_ECHO = re.compile(r"^\s*(?:passage|text|document)\s*:", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return normalise(text).split()


def is_copy(query: str, passage: str, n: int) -> bool:
    """True if the query shares a run of ``n`` words with the passage (or is a long substring of it)."""
    q, p = _words(query), _words(passage)
    if len(q) < n:
        return False
    grams = {tuple(p[i : i + n]) for i in range(len(p) - n + 1)}
    return any(tuple(q[i : i + n]) in grams for i in range(len(q) - n + 1))


def clean_output(raw: str, qtype: str, passage: str, rules: CleanConfig | None = None) -> tuple[str | None, str]:
    """``(query, "ok")`` or ``(None, reason)`` for one raw model output (rules: the cleaning fields
    of :class:`~kadet.config.GenerateConfig`)."""
    rules = rules or CleanConfig()
    if raw is None or not raw.strip():
        return None, "empty"
    line = next((ln for ln in raw.splitlines() if ln.strip()), "")
    if _ECHO.match(line):
        return None, "echoed_prompt"
    text = line.strip()
    for _ in range(2):  # "1. Query: "..." " has two layers
        text = _PREFIX.sub("", text, count=1).strip().strip(_QUOTES).strip()
    text = re.sub(r"\s+", " ", text)
    if not text:
        return None, "empty"
    if _REFUSAL.search(text):
        return None, "refusal"
    if qtype in ("claim", "question"):
        # one sentence: a claim ends at its first full stop, a question at its first "?"
        text = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", text, maxsplit=1)[0]
        if qtype == "question" and "?" in text:
            text = text[: text.index("?") + 1]
    if qtype == "keywords":
        parts = [p.strip().strip(_QUOTES) for p in re.split(r"[,;]", text) if p.strip().strip(_QUOTES)]
        unique: list[str] = []
        for part in parts:  # small models repeat keywords: keep the first of each
            if part.lower() not in (u.lower() for u in unique):
                unique.append(part)
        text = ", ".join(unique[: rules.max_keywords])
    words = text.split()
    min_words = 1 if qtype == "keywords" else rules.min_words
    if len(text) < rules.min_chars or len(words) < min_words:
        return None, "too_short"
    if len(text) > rules.max_chars or len(words) > rules.max_words:
        return None, "too_long"
    if is_copy(text, passage, rules.copy_ngram):
        return None, "copy_of_passage"
    if normalise(text) in _EXAMPLE_OUTPUTS or any(is_copy(text, p, rules.copy_ngram) for p in EXAMPLE_PASSAGES):
        return None, "copied_example"
    if passage and not (_content_words(text) & _content_words(passage)):
        return None, "off_topic"
    return text, "ok"


_EXAMPLE_OUTPUTS = {normalise(q) for qt in QUERY_TYPES.values() for q in qt.examples}
_STOP = set(
    "a an and are as at be by can do does for from has have how in is it its of on or that the this to was were "
    "what when where which who why will with about after all also any between both but each into more most no "
    "not other such than their there these they those through under up use used very"
    .split()
)


def _content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ characters outside a small stopword list, crudely stemmed."""
    return {w[:6] for w in _words(text) if len(w) >= 3 and w not in _STOP}


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    key: str
    doc_id: str
    qtype: str
    k: int
    passage: str
    examples: tuple[int, ...]

    @property
    def query_type(self) -> QueryType:
        return QUERY_TYPES[self.qtype]

    @property
    def prompt_id(self) -> str:
        return self.query_type.prompt_id(list(self.examples))

    def raw_prompt(self) -> str:
        return self.query_type.raw_prompt(self.passage, list(self.examples))

    def chat_messages(self) -> list[dict[str, str]]:
        return self.query_type.chat_messages(self.passage, list(self.examples))

    @property
    def prompt_sha(self) -> str:
        """Digest of the exact prompt (passage text, shots, template): a logged output is reused
        only for the same prompt."""
        return hashlib.sha1(self.raw_prompt().encode()).hexdigest()[:16]


def plan_requests(passages: Sequence[Document], g: GenerateConfig, seed: int) -> list[Request]:
    """Every (passage, type, k) to generate, with seeded few-shot choices; sharded by passage
    range (``shard_range``). The types were checked when the config was loaded."""
    requests = []
    for doc in (passages[i] for i in shard_range(len(passages), g.shard_index, g.num_shards)):
        rng = random.Random(f"{seed}:{doc.doc_id}")
        text = doc.full_text()[: g.max_passage_chars]
        for qtype, weight in g.types.items():
            if qtype in EXTRACTED_TYPES:
                continue  # taken from the passage by finalise, no LLM
            # weight = queries per passage: the integer part always, the fraction with that probability
            n = int(math.floor(weight)) + (1 if rng.random() < weight - math.floor(weight) else 0)
            qt = QUERY_TYPES[qtype]
            shots = qt.shots if g.shots is None or qt.shots == 0 else g.shots
            for k in range(n):
                ex = tuple(sorted(rng.sample(range(len(EXAMPLE_PASSAGES)), shots))) if shots else ()
                requests.append(Request(f"{doc.doc_id}|{qtype}|{k}", doc.doc_id, qtype, k, text, ex))
    return requests


# --------------------------------------------------------------------------- backends


class LocalBackend:
    """Batched in-process generation with a causal LM (default: packaged SmolLM2 GGUF)."""

    name = "local"

    def __init__(self, g: GenerateConfig, cache_dir: Path, seed: int = 42):
        import torch

        self.g = g
        self.seed = seed
        self.device = resolve_device(g.device)
        self.model_name = g.model
        from kadet.llm import load_causal_lm

        self.model, self.tok = load_causal_lm(g.model, cache_dir, self.device)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        vocab = self.tok.convert_ids_to_tokens(list(range(len(self.tok))))
        decoded = [self.tok.convert_tokens_to_string([t]) if t is not None else "" for t in vocab]
        self.newline_ids = torch.tensor([i for i, s in enumerate(decoded) if "\n" in s], device=self.device)
        self._calls = 0

    def generate(self, requests: Sequence[Request], batch_size: int | None = None) -> list[str]:
        import torch

        prompts = [r.raw_prompt() for r in requests]
        bs = batch_size or self.g.batch_size
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        out: list[str] = [""] * len(prompts)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            enc = self.tok([prompts[i] for i in idx], return_tensors="pt", padding=True).to(self.device)
            torch.manual_seed(self.seed + self._calls)
            self._calls += 1
            with torch.inference_mode():
                gen = self.model.generate(**enc, **self._decoding([requests[i].passage for i in idx],
                                                                  enc["input_ids"].shape[1]))
            for row, i in enumerate(idx):
                out[i] = self.tok.decode(gen[row, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return out

    def _decoding(self, passages: list[str], prompt_len: int) -> dict:
        """``generate()`` keyword arguments: sampling settings, stop at a newline, and the three
        controls that keep a small model on its passage (see ``kadet/llm.py``)."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from kadet.llm import NoLongCopy, NoRepeatInOutput, PassageBias, StopAtNewline

        g, sampling = self.g, self.g.temperature > 0
        processors = []
        if g.passage_bias:
            processors.append(PassageBias(self.tok, passages, g.passage_bias, self.newline_ids, self.device))
        if g.no_repeat_ngram_size:
            processors.append(NoRepeatInOutput(g.no_repeat_ngram_size, prompt_len))
        if g.max_copy_tokens:
            processors.append(NoLongCopy(self.tok, g.max_copy_tokens, passages, prompt_len))
        return {"max_new_tokens": g.max_new_tokens, "do_sample": sampling,
                "temperature": g.temperature if sampling else None, "top_p": g.top_p if sampling else None,
                "pad_token_id": self.tok.pad_token_id,
                "repetition_penalty": g.repetition_penalty if g.repetition_penalty != 1.0 else None,
                "stopping_criteria": StoppingCriteriaList([StopAtNewline(self.newline_ids)]),
                "logits_processor": LogitsProcessorList(processors)}


class RetryableError(Exception):
    """A call that may succeed if repeated (5xx, 429, timeout, connection, malformed reply)."""


#: What a malformed reply raises while it is parsed (bad JSON, a missing field, a wrong type).
MALFORMED = (ValueError, KeyError, TypeError, IndexError, AttributeError)


def _classify(exc: BaseException) -> bool:
    """True if ``exc`` is worth a retry: a transient fault of the server or the network.

    A malformed reply reaches here as :class:`RetryableError` (``TGIBackend._call`` wraps only
    the parsing of the reply), so a ``KeyError`` or ``AttributeError`` from a bug is never
    mistaken for a network fault.
    """
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

    if isinstance(exc, (RetryableError, asyncio.TimeoutError, TimeoutError, InferenceTimeoutError, ConnectionError)):
        return True
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return status is None or status >= 500 or status == 429
    name = type(exc).__name__
    return any(s in name for s in ("Timeout", "Connect", "RemoteProtocol", "ReadError", "Transport", "Network"))


def _request_error(exc: BaseException) -> bool:
    """A failure of this one request that a retry will not fix (HTTP 4xx): it is counted as
    failed (a rerun tries again); anything else that is not retryable is a bug and is raised."""
    from huggingface_hub.errors import HfHubHTTPError

    return isinstance(exc, (HfHubHTTPError, RetryableError, OSError))


class TGIBackend:
    """Async client for text-generation-inference / OpenAI-compatible servers."""

    name = "tgi"

    def __init__(self, g: GenerateConfig, sleep: Callable[[float], object] | None = None):
        self.g = g
        self.model_name = g.model
        self._token = os.environ.get(g.tgi.token_env) or None
        self._sleep = sleep or asyncio.sleep
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:  # never show the token
        return f"TGIBackend(url={self.g.tgi.url!r}, api={self.g.tgi.api!r}, token={'set' if self._token else 'unset'})"

    async def _call(self, client, req: Request) -> str:
        g = self.g
        if g.tgi.api == "chat":
            messages = req.chat_messages()

            async def ask():
                resp = await client.chat_completion(
                    messages, model=g.model if g.model != "smollm2" else None,
                    max_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, stop=["\n"],
                )
                return resp.choices[0].message.content or ""
        else:
            prompt = req.raw_prompt()

            async def ask():
                return await client.text_generation(
                    prompt, max_new_tokens=g.max_new_tokens, temperature=g.temperature or None,
                    top_p=g.top_p, stop=["\n"], do_sample=g.temperature > 0,
                )
        try:
            text = await ask()
        except OSError:  # HTTP and transport errors (some also subclass ValueError): classified as they are
            raise
        except MALFORMED as exc:  # only the call and the parsing of its reply are in this block
            raise RetryableError(f"malformed reply: {type(exc).__name__}: {exc}") from exc
        if not isinstance(text, str):
            raise RetryableError(f"malformed reply: expected text, got {type(text).__name__}")
        return text

    async def _one(self, client, sem: asyncio.Semaphore, req: Request) -> str | BaseException:
        async with sem:
            delay = self.g.tgi.backoff_s
            for attempt in range(self.g.tgi.max_retries + 1):
                try:
                    self.stats["calls"] += 1
                    return await asyncio.wait_for(self._call(client, req), timeout=self.g.tgi.timeout_s)
                except Exception as exc:  # transient: retried; a request error: returned; a bug: raised
                    retry = _classify(exc)
                    self.stats[f"error_{type(exc).__name__}"] += 1
                    if not retry and not _request_error(exc):
                        raise
                    if not retry or attempt == self.g.tgi.max_retries:
                        log.warning("tgi request %s failed after %d attempt(s): %s", req.key, attempt + 1,
                                    type(exc).__name__)
                        return exc
                    self.stats["retries"] += 1
                    log.info("tgi request %s: %s, retry %d in %.1fs", req.key, type(exc).__name__,
                             attempt + 1, delay)
                    await self._sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self.g.tgi.backoff_max_s)
            raise AssertionError("unreachable")

    async def _run(self, requests: Sequence[Request]) -> list[str | BaseException]:
        from huggingface_hub import AsyncInferenceClient

        client = AsyncInferenceClient(base_url=self.g.tgi.url, token=self._token, timeout=self.g.tgi.timeout_s)
        # HF_HUB_OFFLINE=1 (kadet's default: no model downloads) makes huggingface_hub's own HTTP
        # session refuse every request, including ones to our own TGI endpoint. Give this client
        # a plain session: same transport settings, without the Hub's offline hook.
        import httpx2

        client._async_client = await client.exit_stack.enter_async_context(
            httpx2.AsyncClient(follow_redirects=True, timeout=None)
        )
        sem = asyncio.Semaphore(self.g.tgi.concurrency)
        try:
            return await asyncio.gather(*(self._one(client, sem, r) for r in requests))
        finally:
            await client.close()

    def generate(self, requests: Sequence[Request]) -> list[str | BaseException]:
        return asyncio.run(self._run(requests))


def make_backend(cfg: KadetConfig):
    g = cfg.generate
    if g.backend == "local":
        return LocalBackend(g, cfg.cache_dir, cfg.seed)
    return TGIBackend(g)  # the only other choice of generate.backend (a Literal, checked at load)


# --------------------------------------------------------------------------- the stage

LOG_NAME = STAGES["generate"].outputs["log"]
#: The settings a logged generation depends on (with the prompt, checked per record).
GENERATION_SETTINGS = ("backend", "model", "max_new_tokens", "passage_bias", "no_repeat_ngram_size",
                       "repetition_penalty", "max_copy_tokens", "temperature", "top_p")


def generation_depends(cfg: KadetConfig) -> dict:
    """What ``generations.jsonl`` records depend on; a change starts the log over."""
    g = cfg.generate
    d = {k: getattr(g, k) for k in GENERATION_SETTINGS} | {"seed": cfg.seed}
    if g.backend == "tgi":
        d |= {"tgi_url": g.tgi.url, "tgi_api": g.tgi.api}
    return d


def logged_output(done: Mapping[str, dict], req: Request) -> dict | None:
    """The logged record of ``req`` if it was generated from this very prompt."""
    rec = done.get(req.key)
    return rec if rec is not None and rec.get("prompt_sha") == req.prompt_sha else None


def run_generation(cfg: KadetConfig, passages: Sequence[Document], out: Path, backend=None) -> Manifest:
    """Generate for every planned request not yet in ``out/generations.jsonl``, then finalise."""
    g = cfg.generate
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_NAME
    requests = plan_requests(passages, g, cfg.seed)
    done = resume_log(log_path, generation_depends(cfg))
    todo = [r for r in requests if logged_output(done, r) is None]
    store = Store.open(cfg.work_dir, "generate", generation_depends(cfg))
    todo, reused = reuse_stored(store, todo, log_path)
    log.info("generate: %d requests, %d already done, %d from earlier runs, %d to do", len(requests),
             len(requests) - len(todo) - reused, reused, len(todo))
    rules = g.clean
    failed = 0
    t0 = time.perf_counter()
    if todo:
        backend = backend or make_backend(cfg)
        from kadet.progress import bar as progress_bar

        bar = progress_bar(len(todo), "generate", show=g.progress)
        for start in range(0, len(todo), g.flush_every):
            chunk = todo[start : start + g.flush_every]
            outputs = backend.generate(chunk)
            records = {}
            for req, raw in zip(chunk, outputs):
                if isinstance(raw, BaseException):
                    failed += 1  # not logged: a rerun retries it
                    continue
                text, reason = clean_output(raw, req.qtype, req.passage, rules)
                records[store_key(req)] = {
                    "key": req.key, "doc_id": req.doc_id, "type": req.qtype, "k": req.k, "raw": raw,
                    "text": text, "status": reason, "prompt_id": req.prompt_id, "prompt_sha": req.prompt_sha,
                    "backend": backend.name, "model": backend.model_name,
                }
            append_jsonl(log_path, list(records.values()))
            store.put(records)
            bar.update(len(chunk))
        bar.close()
    work = {"reused": reused, "generated": len(todo) - failed}
    return finalise(cfg, requests, out, failed, time.perf_counter() - t0, passages, work)


def store_key(req: Request) -> str:
    """A generation's key in the store: its exact prompt (passage text, shots, template) and ``k``."""
    return f"{req.prompt_sha}|{req.k}"


def reuse_stored(store: Store, todo: Sequence[Request], log_path: Path) -> tuple[list[Request], int]:
    """Copy the outputs the store holds for ``todo`` (earlier runs, same prompt and settings) into
    this run's log; returns the requests still to generate and how many were reused."""
    stored = store.get(store_key(r) for r in todo)
    records = [{**stored[store_key(r)], "key": r.key, "doc_id": r.doc_id, "k": r.k} for r in todo
               if store_key(r) in stored]
    append_jsonl(log_path, records)
    return [r for r in todo if store_key(r) not in stored], len(records)


def finalise(cfg: KadetConfig, requests: Sequence[Request], out: Path, failed: int, seconds: float,
             passages: Sequence[Document] = (), work: Mapping[str, int] | None = None) -> Manifest:
    """Write ``queries.jsonl`` (kept, de-duplicated) and the manifest from the generation log,
    then the extracted (``sentence``) queries of ``passages``."""
    done = read_log(out / LOG_NAME)
    m = Manifest(stage="generate", config_hash=cfg.hash())
    seen: set[str] = set()
    rows = []
    by_type: Counter[str] = Counter()
    rules = cfg.generate.clean
    for req in requests:  # plan order: stable output whatever the completion order was
        rec = logged_output(done, req)
        if rec is None:
            continue
        # clean again from the raw output: cleaning rules may have changed since generation
        text, reason = clean_output(rec["raw"], req.qtype, req.passage, rules)
        if text is None:
            m.drop(reason)
            continue
        rec = {**rec, "text": text}
        norm = normalise(text)
        if norm in seen:
            m.drop("duplicate")
            continue
        seen.add(norm)
        by_type[rec["type"]] += 1
        rows.append({
            "qid": f"gen-{rec['key'].replace('|', '-')}", "text": rec["text"], "type": rec["type"],
            "source_doc_id": rec["doc_id"], "backend": rec["backend"], "model": rec["model"],
            "prompt_id": rec["prompt_id"],
        })
    llm_kept = len(rows)
    g = cfg.generate
    for kind in EXTRACTED_TYPES:
        if g.types.get(kind, 0) > 0:
            for row in extract_queries(passages, kind, cfg.seed, g.types[kind], (g.shard_index, g.num_shards)):
                norm = normalise(row["text"])
                if norm in seen:
                    m.drop("duplicate")
                    continue
                seen.add(norm)
                by_type[kind] += 1
                rows.append(row)
    missing = sum(1 for r in requests if logged_output(done, r) is None)
    if missing:  # never a partial queries.jsonl under the final name: the log keeps the finished work
        Path(file_in(out, "generate", "queries")).unlink(missing_ok=True)
        m.complete = False
        m.outputs = {"log": LOG_NAME}
    else:
        m.outputs = dict(STAGES["generate"].outputs)
        write_jsonl(file_in(out, "generate", "queries"), rows)
    m.counts = {"requests": len(requests), "finished": len(requests) - missing, "kept": len(rows),
                "failed_this_run": failed, "missing": missing, **{f"kept_{t}": n for t, n in by_type.items()},
                **(work or {})}
    finished = len(requests) - missing
    m.extra = {"usable_fraction": round(llm_kept / finished, 4) if finished else 0.0,
               "seconds_this_run": round(seconds, 1), "backend": cfg.generate.backend, "types": cfg.generate.types}
    m.write(out)
    if missing:
        raise KadetError(f"generate: {missing} of {len(requests)} requests failed; rerun to resume "
                         f"({out / LOG_NAME} keeps the {len(requests) - missing} finished ones)")
    return m


def load_passages(cfg: KadetConfig, passages_path: str | Path) -> tuple[list[Document], Path]:
    """The passages to generate for (``generate.max_passages`` applied) and the local file."""
    from kadet.storage import localize

    local = localize(passages_path)
    passages = list(read_corpus(local).values())
    if cfg.generate.max_passages:
        passages = passages[: cfg.generate.max_passages]
    return passages, local


def generate(cfg: KadetConfig, passages_path: str | Path, output_dir: str | Path, backend=None) -> Manifest:
    """Run the stage on a ``passages.jsonl`` written by the prepare stage."""
    passages, local = load_passages(cfg, passages_path)
    m = run_generation(cfg, passages, Path(output_dir), backend)
    m.add_input("passages", passages_path, local)
    m.write(output_dir)
    return m


def merge_shards(cfg: KadetConfig, passages_path: str | Path, shard_dirs: Sequence[str | Path],
                 output_dir: str | Path) -> Manifest:
    """Join the generation logs of ``generate.num_shards`` workers into one ``queries.jsonl``,
    exactly as one unsharded run writes it (plan order, global de-duplication)."""
    import copy

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    depends = generation_depends(cfg)
    merged: dict[str, dict] = resume_log(out / LOG_NAME, depends)
    for d in shard_dirs:
        shard_log = Path(d) / LOG_NAME
        if not written_for(shard_log, depends):
            raise KadetError(f"generate merge: {shard_log} was generated with other settings than this "
                             f"merge's ({depends}); rerun the shards with the same configuration")
        for key, rec in read_log(shard_log).items():
            merged.setdefault(key, rec)
    (out / LOG_NAME).unlink(missing_ok=True)
    append_jsonl(out / LOG_NAME, list(merged.values()))
    whole = copy.deepcopy(cfg)
    whole.generate.shard_index, whole.generate.num_shards = 0, 1
    passages, local = load_passages(whole, passages_path)
    m = finalise(whole, plan_requests(passages, whole.generate, whole.seed), out, 0, 0.0, passages)
    m.add_input("passages", passages_path, local)
    m.counts["shards"] = len(shard_dirs)
    m.write(out)
    return m


# --------------------------------------------------------------------------- extracted queries

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
#: Query types taken from the passage itself, no LLM: ``sentence`` (Inverse Cloze Task style).
EXTRACTED_TYPES = ("sentence",)
SPAN_WORDS = 16


def extract_sentence(doc: Document, rng: random.Random, min_words: int = 4, max_words: int = 40) -> str | None:
    """One sentence of the passage text; for text without sentence boundaries (or only one
    sentence) a span of up to ``SPAN_WORDS`` words, at most half the passage. None if too short."""
    sentences = [x.strip() for x in _SENTENCE_END.split(doc.text) if x.strip()]
    usable = [x for x in sentences if min_words <= len(x.split()) <= max_words]
    if len(sentences) >= 2 and usable:
        return rng.choice(usable)
    words = doc.text.split()
    n = min(SPAN_WORDS, len(words) // 2)
    if n < min_words:
        return None
    start = rng.randrange(0, len(words) - n + 1)
    return " ".join(words[start : start + n])


def extract_queries(passages: Sequence[Document], kind: str, seed: int, weight: float = 1.0,
                    shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Queries taken from the passages themselves, in ``queries.jsonl`` form: with probability
    ``weight`` per passage (seeded by passage id, so sharding changes nothing), one ``kind``
    query per passage of this ``shard`` (index, count: ``shard_range``, as ``plan_requests``)."""
    if kind not in EXTRACTED_TYPES:
        raise ConfigError(f"extracted query type must be one of {EXTRACTED_TYPES}, got {kind!r}")
    rows = []
    for doc in (passages[i] for i in shard_range(len(passages), *shard)):
        rng = random.Random(f"{seed}|{doc.doc_id}|{kind}")
        if rng.random() >= weight:
            continue
        text = extract_sentence(doc, rng)
        if text is None:
            continue
        rows.append({"qid": f"{kind}-{doc.doc_id}", "text": text, "type": kind, "source_doc_id": doc.doc_id,
                     "backend": "extract", "model": "", "prompt_id": ""})
    return rows
