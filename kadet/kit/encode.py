"""Dense encoding with a sentence-transformers model and an on-disk embedding cache.

The :class:`Encoder` runs the model's own modules (so pooling, normalisation and any
Router stay as the model defines them) but batches by token budget over length-sorted,
de-duplicated texts, and looks every text up in an :class:`EmbeddingCache` first, so no
stage encodes the same corpus twice::

    enc = Encoder("all-MiniLM-L6-v2", cache_dir=".kadet/cache")
    doc_emb = enc.encode(texts, kind="document")      # (n, 384) float32, L2-normalised
    q_emb = enc.encode(["what is x?"], kind="query")

Cache key: the fingerprint of the modules that encode that kind of text (their weights,
configs and tokenizer: :func:`route_fingerprint`) + prompt + kind, then the SHA-1 of each
text. A query-side-tuned model (a Router whose document route is the untouched base model)
therefore reuses the base model's cached corpus embeddings: its index stays valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kadet.kit.models import resolve_device, resolve_model_path
from kadet.kit.towers import quiet_router_lengths
from kadet.core.progress import bar as progress_bar

log = logging.getLogger(__name__)


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


def route_modules(model, kind: str) -> list:
    """The modules that encode ``kind`` (``query`` / ``document``) texts, Router resolved."""
    mods = []
    for m in model:
        subs = getattr(m, "sub_modules", None)
        if type(m).__name__ == "Router" and subs is not None:
            route = kind if kind in subs else m.default_route
            mods.extend(subs[route])
        else:
            mods.append(m)
    return mods


def route_fingerprint(model, kind: str) -> str:
    """The *route fingerprint* (an embedding cache key part): content hash of what turns a ``kind``
    text into a vector: each module's type, config, tokenizer and weights. Equal for a plain
    model and a Router route built from it."""
    h = hashlib.sha256()
    for m in route_modules(model, kind):
        h.update(type(m).__name__.encode() + b"\0")
        conf = m.get_config_dict() if hasattr(m, "get_config_dict") else {}
        h.update(json.dumps(conf, sort_keys=True, default=str).encode() + b"\0")
        h.update(str(getattr(m, "max_seq_length", None)).encode() + b"\0")
        tok = getattr(m, "tokenizer", None)
        if tok is not None and hasattr(tok, "backend_tokenizer"):
            h.update(tok.backend_tokenizer.to_str().encode())
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode() + b"\0")
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


#: A bound on the characters one token can stand for: a text longer than ``max_tokens`` times this
#: is cut before it reaches a tokenizer, which would otherwise tokenise all of it (a 7.7 MB document:
#: 2.3x the peak memory) only to keep the first ``max_tokens``. Generous on purpose: English
#: averages ~4-5 characters a token, so the cut changes the kept tokens only of a text that averages
#: more than 32 characters a token (long runs of spaces or symbols), never of prose.
CHARS_PER_TOKEN = 32


def clip_text(text: str, max_tokens: int) -> str:
    """``text`` cut to ``max_tokens * CHARS_PER_TOKEN`` characters: what every tokenizer kadet calls
    is given (the encoder, the teachers, distill), so none tokenises a huge document whole."""
    limit = max(int(max_tokens), 1) * CHARS_PER_TOKEN
    return text if len(text) <= limit else text[:limit]


#: Encodes of at least this many texts report progress (a corpus, not a batch of queries).
PROGRESS_FROM = 2000
#: Texts tokenized and encoded at a time (length-sorted batches within each chunk).
ENCODE_CHUNK = 4096

class EmbeddingCache:
    """Append-only store of ``text hash -> embedding`` for one model setting.

    Layout: ``<root>/<namespace>/part-<uuid>.npz`` with arrays ``keys`` (n x 20 bytes) and
    ``emb`` (n x d float32). Parts are written atomically, so concurrent writers and crashes
    never leave a half-written part.
    """

    def __init__(self, root: str | os.PathLike, namespace: str):
        self.dir = Path(root) / namespace
        self._index: dict[bytes, tuple[int, int]] | None = None
        self._parts: list[np.ndarray] = []

    def _load(self) -> dict[bytes, tuple[int, int]]:
        if self._index is None:
            self._index = {}
            if self.dir.exists():
                for part in sorted(self.dir.glob("part-*.npz")):
                    try:
                        with np.load(part) as z:
                            keys, emb = z["keys"], z["emb"]
                    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                        log.warning("embedding cache: skipping unreadable %s (%s); it will be recomputed", part, exc)
                        continue
                    self._add(keys, emb)
        return self._index

    def _add(self, keys: np.ndarray, emb: np.ndarray) -> None:
        assert self._index is not None
        pid = len(self._parts)
        self._parts.append(emb)
        for row, k in enumerate(keys):
            self._index[bytes(k)] = (pid, row)

    def __len__(self) -> int:
        return len(self._load())

    def get(self, keys: Sequence[bytes], out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Return ``(found_mask, embeddings_of_found_in_order)``; with ``out`` (len(keys) x d), the
        found rows are written into it in place and ``None`` is returned for them (no second copy
        of a corpus's embeddings)."""
        index = self._load()
        hits = [index.get(k) for k in keys]
        mask = np.array([h is not None for h in hits], dtype=bool)
        if not mask.any():
            return mask, None
        if out is None:
            return mask, np.stack([self._parts[p][r] for p, r in (h for h in hits if h is not None)])
        pos = np.flatnonzero(mask)
        where = np.array([hits[i] for i in pos], dtype=np.int64).reshape(-1, 2)
        for pid in np.unique(where[:, 0]):                  # one gather per part
            sel = where[:, 0] == pid
            out[pos[sel]] = self._parts[pid][where[sel, 1]]
        return mask, None

    def put(self, keys: Sequence[bytes], emb: np.ndarray) -> None:
        if len(keys) == 0:
            return
        self._load()
        self.dir.mkdir(parents=True, exist_ok=True)
        karr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), -1)
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        name = self.dir / f"part-{uuid.uuid4().hex}.npz"
        tmp = self.dir / f".tmp-{name.name}"  # never matches the readers' part-*.npz
        np.savez(tmp, keys=karr, emb=emb)
        os.replace(tmp, name)
        self._add(karr, emb)


class Encoder:
    """Encode texts with a sentence-transformers model; see the module docstring."""

    def __init__(
        self,
        model: str | os.PathLike,
        device: str | None = None,
        batch_size: int = 128,
        max_tokens: int | None = None,
        max_seq_length: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        query_prompt: str = "",
        document_prompt: str = "",
        show_progress: bool = False,
    ):
        from sentence_transformers import SentenceTransformer

        quiet_router_lengths()
        self.path = resolve_model_path(model)
        self.device = resolve_device(device)
        self.model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        self.model.eval()
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        # A token budget per batch: on CPU, small padded batches keep the activations in cache
        # (measured: 4,096 tokens beats 64 x 256 by ~20% on 2 cores); GPUs want larger batches.
        self.max_tokens = max_tokens or (4096 if self.device == "cpu" else 65536)
        self.prompts = {"query": query_prompt, "document": document_prompt}
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.show_progress = show_progress
        self._fingerprints: dict[str, str] = {}
        self._routed = any(type(m).__name__ == "Router" for m in self.model)

    @classmethod
    def from_config(cls, cfg, model: str | os.PathLike | None = None) -> "Encoder":
        """An encoder with the ``retrieval`` settings of a :class:`~kadet.core.config.KadetConfig`."""
        r = cfg.retrieval
        return cls(model or r.model, device=r.device, batch_size=r.batch_size, max_tokens=r.max_tokens,
                   max_seq_length=r.max_seq_length, cache_dir=cfg.cache_dir if r.embedding_cache else None,
                   query_prompt=r.query_prompt, document_prompt=r.passage_prompt)

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def route_max_tokens(self, kind: str) -> int:
        """The tokens a ``kind`` text is truncated to: its route's own ``max_seq_length`` (a
        query-side Router's query and document towers have different ones), else 512."""
        first = route_modules(self.model, kind)[0]
        return getattr(first, "max_seq_length", None) or 512

    def _cache(self, kind: str) -> EmbeddingCache | None:
        if self.cache_dir is None:
            return None
        if kind not in self._fingerprints:
            self._fingerprints[kind] = route_fingerprint(self.model, kind)
        setting = f"{self._fingerprints[kind]}|{kind}|{self.prompts[kind]}"
        return EmbeddingCache(self.cache_dir, hashlib.sha1(setting.encode()).hexdigest()[:20])

    def encode(self, texts: Sequence[str], kind: str = "document") -> np.ndarray:
        """Embeddings (float32, as the model outputs them) for ``texts``, in input order."""
        if kind not in self.prompts:
            raise ValueError(f"kind must be 'query' or 'document', got {kind!r}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique = list(dict.fromkeys(texts))
        keys = [text_key(t) for t in unique]
        out = np.zeros((len(unique), self.dim), dtype=np.float32)
        cache = self._cache(kind)
        todo = np.arange(len(unique))
        if cache is not None:
            mask, _ = cache.get(keys, out=out)
            todo = np.flatnonzero(~mask)
        if len(todo):
            emb = self._forward([unique[i] for i in todo], self.prompts[kind], kind)
            out[todo] = emb
            if cache is not None:
                cache.put([keys[i] for i in todo], emb)
            del emb
        del cache                                            # its parts: the whole cache, in memory
        if len(unique) == len(texts):                        # a corpus: no repeated text, no reordering copy
            return out
        pos = {t: i for i, t in enumerate(unique)}
        return out[[pos[t] for t in texts]]

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by decreasing token length, cut under the token budget and batch size."""
        order = np.argsort(-np.asarray(lengths), kind="stable")
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            # the first item of a batch is its longest, so the padded size is n x lengths[first]
            if current and (
                len(current) >= self.batch_size or (len(current) + 1) * lengths[current[0]] > self.max_tokens
            ):
                batches.append(current)
                current = []
            current.append(int(i))
        if current:
            batches.append(current)
        return batches

    def _forward(self, texts: list[str], prompt: str, task: str = "document") -> np.ndarray:
        """Tokenize once, pad each length-sorted batch to its own longest text, run the model;
        :data:`ENCODE_CHUNK` texts at a time, so a corpus's tokenizations are never held whole
        (a fast tokenizer keeps every text's full token list, overflow included: ~150 kB per passage)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        progress = None
        if self.show_progress or len(texts) >= PROGRESS_FROM:  # a corpus, not a handful of queries
            progress = progress_bar(len(texts), f"encode {len(texts):,} texts", show=self.show_progress)
        with torch.inference_mode():
            for start in range(0, len(texts), ENCODE_CHUNK):
                chunk = texts[start : start + ENCODE_CHUNK]
                out[start : start + len(chunk)] = self._forward_chunk(chunk, prompt, task, progress)
        if progress is not None:
            progress.close()
        return out

    def _forward_chunk(self, texts: list[str], prompt: str, task: str, progress) -> np.ndarray:
        first = self.model[0]
        tok = getattr(self.model, "tokenizer", None)
        pooling = next((m for m in self.model if hasattr(m, "include_prompt")), None)
        fast = (
            tok is not None
            and type(first).__name__ == "Transformer"
            and (not prompt or pooling is None or pooling.include_prompt)
        )
        max_len = self.route_max_tokens(task)
        texts = [clip_text(t, max_len) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if fast:
            # the ids alone: the tokenizer's Encoding objects (offsets, overflow) are dropped here
            enc = dict(tok([prompt + t for t in texts], add_special_tokens=True, truncation=True, max_length=max_len))
            lengths = [len(ids) for ids in enc["input_ids"]]
        else:  # generic path (Router, multimodal, prompt excluded from pooling): let ST preprocess
            lengths = [len(t) // 4 + 2 for t in texts]
        for batch in self._batches(lengths):
            if fast:
                features = dict(tok.pad({k: [v[i] for i in batch] for k, v in enc.items()}, return_tensors="pt"))
                features["modality"] = "text"
            else:
                kwargs = {"prompt": prompt} if prompt else {}
                if self._routed:  # asymmetric model: pick the query or document tower
                    kwargs["task"] = task
                features = self.model.preprocess([texts[i] for i in batch], **kwargs)
            features = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in features.items()}
            emb = self.model(features)["sentence_embedding"]
            out[batch] = emb.float().cpu().numpy()
            if progress is not None:
                progress.update(len(batch))
        return out
