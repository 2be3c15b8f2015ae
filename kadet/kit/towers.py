"""The two towers of a query-side model, as plain sentence-transformers folders.

A query-side model (``distill.mode: query``) is a sentence-transformers ``Router`` whose ``query``
route is the tuned tower and whose ``document`` route is the base model. Distill starts a student
from a champion's query tower, and ``kadet export`` writes each tower as a plain folder, with
these functions.
"""

from __future__ import annotations

import json
from pathlib import Path

from kadet.core.errors import KadetError

#: How a Router's module type ends in ``modules.json``.
ROUTER_TYPE_SUFFIX = ".Router"


def model_mode(path: Path) -> str:
    """``query`` for a query-side Router model, ``full`` for a plain sentence-transformers model."""
    modules = json.loads((path / "modules.json").read_text())
    return "query" if len(modules) == 1 and modules[0]["type"].endswith(ROUTER_TYPE_SUFFIX) else "full"


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
