"""Generation backends (``generate.backend``): ``local`` (in-process transformers) and ``tgi``
(an async client of a text-generation-inference or OpenAI-compatible server); see the package
docs for what each does."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from kadet.core.config import GenerateConfig, KadetConfig
from kadet.stages.generate.requests import Request
from kadet.kit.models import resolve_device

log = logging.getLogger(__name__)


class LocalBackend:
    """Batched in-process generation with a causal LM (default: packaged SmolLM2 GGUF)."""

    name = "local"

    def __init__(self, g: GenerateConfig, cache_dir: Path, seed: int = 42):
        import torch

        self.g = g
        self.seed = seed
        self.device = resolve_device(g.device)
        self.model_name = g.model
        from kadet.llm.causal import load_causal_lm

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
        controls that keep a small model on its passage (see ``kadet/llm/causal.py``)."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from kadet.llm.causal import NoLongCopy, NoRepeatInOutput, PassageBias, StopAtNewline

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


def is_retryable(exc: BaseException) -> bool:
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


def fails_only_this_request(exc: BaseException) -> bool:
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
                    retry = is_retryable(exc)
                    self.stats[f"error_{type(exc).__name__}"] += 1
                    if not retry and not fails_only_this_request(exc):
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

