"""The two towers of a query-side model, as plain sentence-transformers folders.

A query-side model (``distill.mode: query``) is a sentence-transformers ``Router`` whose ``query``
route is the tuned tower and whose ``document`` route is the base model. Distill starts a student
from a champion's query tower, and ``kadet export`` writes each tower as a plain folder, with
these functions. :func:`quiet_router_lengths` keeps sentence-transformers from warning that the
two towers' lengths differ, which they do on purpose.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kadet.core.io import read_json
from kadet.core.errors import KadetError

#: The logger of sentence-transformers' Router, and the start of the one message of it that
#: :func:`quiet_router_lengths` drops.
ROUTER_LOGGER = "sentence_transformers.base.modules.router"
LENGTHS_WARNING = "Different max_seq_lengths detected"

#: How a Router's module type ends in ``modules.json``.
ROUTER_TYPE_SUFFIX = ".Router"


def model_mode(path: Path) -> str:
    """``query`` for a query-side Router model, ``full`` for a plain sentence-transformers model."""
    modules = read_json(path / "modules.json")
    return "query" if len(modules) == 1 and modules[0]["type"].endswith(ROUTER_TYPE_SUFFIX) else "full"


class _RouterLengths(logging.Filter):
    """Drops the Router's "Different max_seq_lengths detected: {64, 256}" warning, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LENGTHS_WARNING)


def quiet_router_lengths() -> None:
    """Silence the Router's "Different max_seq_lengths detected: {64, 256}. Using the maximum
    value." (once per process, installed once). A query-side model's towers have different
    lengths on purpose (``distill.query_max_len``, ``distill.passage_max_len``); the warning fires
    whenever something reads the Router's single ``max_seq_length``, as sentence-transformers' own
    model card does on every save (distill, register) and load. kadet truncates each text to its own
    route's length (``Encoder.route_max_tokens``), so nothing uses that maximum: the warning only
    put a library line on the console of every query-mode run."""
    logger = logging.getLogger(ROUTER_LOGGER)
    if not any(isinstance(f, _RouterLengths) for f in logger.filters):
        logger.addFilter(_RouterLengths())


def route_prompt(st, route: str) -> str:
    """The prompt ``encode_query`` (``route='query'``) / ``encode_document`` adds by default."""
    names = ["query"] if route == "query" else ["document", "passage", "corpus"]
    for n in names:
        if n in st.prompts:
            return st.prompts[n] or ""
    return ""


def save_tower(src, route: str, out: Path) -> None:
    """A plain sentence-transformers folder whose ``encode`` is ``src``'s ``encode_<route>``:
    the route's modules (or all of a non-Router model), with that route's prompt as the default."""
    from sentence_transformers import SentenceTransformer

    first = src[0]
    if hasattr(first, "sub_modules"):   # a Router
        if route not in first.sub_modules:
            raise KadetError(f"export: the Router has no {route!r} route (routes: {', '.join(first.sub_modules)})")
        modules = list(first.sub_modules[route])
    else:
        modules = list(src)
    prompt = route_prompt(src, route)
    tower = SentenceTransformer(modules=modules, device="cpu", prompts={route: prompt} if prompt else None,
                                default_prompt_name=route if prompt else None,
                                similarity_fn_name=src.similarity_fn_name)
    tower.save(str(out))
