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

One module per job:

``clean``     the cleaning rules (raw output -> query or drop reason)
``requests``  request planning (passage, type, k; seeded few-shot choices; sharding)
``backends``  the ``local`` and ``tgi`` backends, and which TGI failures are worth a retry
``extract``   the extracted query types (``sentence``: taken from the passage, no LLM)
``stage``     the stage: the log (:mod:`kadet.core.journal`), the store reuse, ``queries.jsonl``,
              the merge of shards

The query types themselves are listed once, in :mod:`kadet.llm.prompts`.
"""

from kadet.stages.generate.backends import (MALFORMED, LocalBackend, RetryableError, TGIBackend, is_retryable,
                                     make_backend)
from kadet.stages.generate.clean import clean_output, is_copy
from kadet.stages.generate.extract import SPAN_WORDS, extract_queries, extract_sentence
from kadet.stages.generate.requests import Request, plan_requests, unsharded
from kadet.stages.generate.stage import (GENERATION_SETTINGS, LOG_NAME, generate, generation_depends, load_passages,
                                  logged_output, merge_generation_shards, reuse_stored, run_generation, store_key,
                                  write_queries)
from kadet.llm.prompts import EXTRACTED_TYPES

__all__ = [
    "EXTRACTED_TYPES", "GENERATION_SETTINGS", "LOG_NAME", "MALFORMED", "SPAN_WORDS", "LocalBackend", "Request",
    "RetryableError", "TGIBackend", "clean_output", "extract_queries", "extract_sentence", "generate",
    "generation_depends", "is_copy", "is_retryable", "load_passages", "logged_output", "make_backend",
    "merge_generation_shards", "plan_requests", "reuse_stored", "run_generation", "store_key", "unsharded",
    "write_queries",
]
