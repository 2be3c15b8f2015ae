"""The cleaning rules: one raw model output -> one query, or the reason it was dropped.

Re-applied to the raw outputs in the log every time the stage writes ``queries.jsonl``, so a
change of the rules (``generate.clean``) needs no new generation.
"""

from __future__ import annotations

import re

from kadet.core.config import CleanConfig
from kadet.kit.data import normalise
from kadet.llm.prompts import EXAMPLE_PASSAGES, QUERY_TYPES

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
_EXAMPLE_OUTPUTS = {normalise(q) for qt in QUERY_TYPES.values() for q in qt.examples}
_STOP = set(
    "a an and are as at be by can do does for from has have how in is it its of on or that the this to was were "
    "what when where which who why will with about after all also any between both but each into more most no "
    "not other such than their there these they those through under up use used very"
    .split()
)


def _words(text: str) -> list[str]:
    return normalise(text).split()


def _content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ characters outside a small stopword list, crudely stemmed."""
    return {w[:6] for w in _words(text) if len(w) >= 3 and w not in _STOP}


def is_copy(query: str, passage: str, n: int) -> bool:
    """True if the query shares a run of ``n`` words with the passage (or is a long substring of it)."""
    q, p = _words(query), _words(passage)
    if len(q) < n:
        return False
    grams = {tuple(p[i : i + n]) for i in range(len(p) - n + 1)}
    return any(tuple(q[i : i + n]) in grams for i in range(len(q) - n + 1))


def clean_output(raw: str, qtype: str, passage: str, rules: CleanConfig | None = None) -> tuple[str | None, str]:
    """``(query, "ok")`` or ``(None, reason)`` for one raw model output (rules: the cleaning fields
    of :class:`~kadet.core.config.GenerateConfig`)."""
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
