"""Distill's model folder: what ``SentenceTransformer(path)`` loads, in full mode the tuned model,
in query mode an asymmetric ``Router`` model (tuned query tower, base document tower); with
``distill.base_weight`` the weights interpolated with the start's (WiSE-FT)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from kadet.core.config import DistillConfig
from kadet.core.errors import KadetError
from kadet.kit.towers import quiet_router_lengths


def save_model(model, path: Path, settings: DistillConfig, init_path: Path, base_path: Path) -> None:
    """Save ``model`` (the student, which started from ``init_path``) as the folder ``path``:
    written beside it, then renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if settings.base_weight:
        model = interpolated(model, init_path, settings.base_weight)
    if settings.mode == "full":
        model.max_seq_length = settings.passage_max_len
        model.save(str(tmp))
    else:
        save_query_side_model(model, base_path, tmp, settings.query_max_len)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def interpolated(model, base_path: Path, base_weight: float):
    """A copy of ``model`` with every floating-point weight ``w`` replaced by
    ``base_weight x w_base + (1 - base_weight) x w`` (WiSE-FT); ``base_path`` is the model the
    tuning started from (the base model, or the champion's tower with ``distill.init: champion``),
    so the parameter names match."""
    from sentence_transformers import SentenceTransformer

    if not 0.0 <= base_weight <= 1.0:
        raise KadetError(f"distill.base_weight must be in [0, 1], got {base_weight}")
    base = SentenceTransformer(str(base_path), device="cpu", local_files_only=True).state_dict()
    out = copy.deepcopy(model).to("cpu")
    state = out.state_dict()
    for name, w in state.items():
        if name not in base or base[name].shape != w.shape:
            raise KadetError(f"cannot interpolate with the base model: weight {name!r} differs")
        if w.is_floating_point():
            state[name] = base_weight * base[name].to(w.dtype) + (1.0 - base_weight) * w
    out.load_state_dict(state)
    return out


def save_query_side_model(query_model, base_path: Path, out: Path, query_max_len: int) -> None:
    """A Router model: ``query`` route = the tuned modules, ``document`` route = the base model.

    The default route (what ``encode()`` without a task uses) is ``query``: frameworks embed each
    user query with ``encode()``, and a document default would hand them the base model's query
    embeddings, silently undoing the training. Documents are indexed with ``encode_document()``
    (= the base model, so an existing index stays valid), or with ``kadet export``'s ``document/``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Router

    quiet_router_lengths()
    base = SentenceTransformer(str(base_path), device="cpu", local_files_only=True)
    tuned = copy.deepcopy(query_model).to("cpu")
    tuned.max_seq_length = query_max_len
    router = Router.for_query_document(query_modules=list(tuned), document_modules=list(base), default_route="query")
    SentenceTransformer(modules=[router], device="cpu").save(str(out))
