"""Extracted query types: queries taken from the passage itself, no LLM (:data:`EXTRACTED_TYPES`)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from kadet.kit.data import Document
from kadet.core.errors import ConfigError
from kadet.llm.prompts import EXTRACTED_TYPES
from kadet.core.layout import shard_range

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
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
    """Queries taken from the passages themselves, in ``queries.jsonl`` form, for the passages of
    this ``shard`` (index, count: ``shard_range``, as ``plan_requests``): ``weight`` queries per
    passage, a fraction being a probability (0.5: every other passage; 2.5: two, and a third for
    every other passage), each a different sentence (span) of it, all seeded by passage id, so
    sharding changes nothing and a passage's first query is the same whatever the weight."""
    if kind not in EXTRACTED_TYPES:
        raise ConfigError(f"extracted query type must be one of {EXTRACTED_TYPES}, got {kind!r}")
    rows = []
    for doc in (passages[i] for i in shard_range(len(passages), *shard)):
        rng = random.Random(f"{seed}|{doc.doc_id}|{kind}")
        if rng.random() >= weight:
            continue
        texts = [extract_sentence(doc, rng)]
        if texts[0] is None:
            continue
        more = random.Random(f"{seed}|{doc.doc_id}|{kind}|more")
        wanted = int(weight) + (more.random() < weight - int(weight)) if weight > 1 else 1
        for _ in range(4 * wanted):      # distinct texts; a short passage may have fewer
            if len(texts) >= wanted:
                break
            text = extract_sentence(doc, more)
            if text is not None and text not in texts:
                texts.append(text)
        # the first query's id as ever; the others' carry "#i" (a "-i" could be another passage's id)
        rows += [{"qid": f"{kind}-{doc.doc_id}" + (f"#{i}" if i else ""), "text": text, "type": kind,
                  "source_doc_id": doc.doc_id, "backend": "extract", "model": "", "prompt_id": ""}
                 for i, text in enumerate(texts)]
    return rows
