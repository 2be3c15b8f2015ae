"""Teachers: score (query, passage) lists for labelling. Chosen by name in ``label.teacher``
(the names are kadet/core/config.py's ``TEACHERS``, checked when the config is loaded).

=========================  ===============================================================
``dense``                  cosine of the base embedding model (``retrieval.model``)
``dense:PATH``             cosine of another sentence-transformers model
``bm25``                   BM25 score over the clean corpus
``ql``                     LLM query likelihood: mean log P(query tokens | passage prompt)
                           (UPR / ART style; ``label.llm_model``, default packaged SmolLM2)
``ql:MODEL``               the same with another causal LM
``cross-encoder:PATH``     any Hugging Face AutoModelForSequenceClassification reranker
``monot5:PATH``            monoT5: log-softmax of the "true" vs "false" first-token logits
``rankt5:PATH``            RankT5: the ``<extra_id_10>`` logit of the first decoder step
``ensemble``               weighted sum of per-query z-normalised scores of the members in
                           ``label.ensemble`` (e.g. ``{dense: 1.0, bm25: 1.0, ql: 0.5}``)
=========================  ===============================================================

Every teacher implements ``score(queries, doc_lists) -> list[np.ndarray]``: one score per
document of each list, higher is more relevant.

The ``ql`` teacher is built to be cheap on CPU: each passage prompt runs through the model
once and its KV cache is reused for every query whose list contains that passage, and the
vocabulary projection is computed only at the positions that predict query tokens.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from kadet.core.config import TEACHERS
from kadet.kit.data import Document
from kadet.kit.encode import clip_text
from kadet.core.errors import ConfigError, KadetError
from kadet.kit.models import resolve_device

log = logging.getLogger(__name__)


class Teacher(Protocol):
    """What every teacher implements (see the module table); ``build_teacher`` makes one by name."""

    name: str

    def score(self, queries: Sequence[str], doc_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """One score per document of each list; higher is more relevant."""
        ...


def znorm(scores: np.ndarray) -> np.ndarray:
    """Per-list z-normalisation (a constant list maps to zeros)."""
    s = np.asarray(scores, dtype=np.float64)
    sd = s.std()
    return (s - s.mean()) / sd if sd > 1e-12 else np.zeros_like(s)


class DenseTeacher:
    name = "dense"

    def __init__(self, encoder, corpus: Mapping[str, Document], title_separator: str = " "):
        self.encoder, self.corpus, self.sep = encoder, corpus, title_separator

    def score(self, queries: Sequence[str], doc_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        ids = list(dict.fromkeys(d for lst in doc_lists for d in lst))
        pos = {d: i for i, d in enumerate(ids)}
        demb = self.encoder.encode([self.corpus[d].full_text(self.sep) for d in ids], kind="document")
        qemb = self.encoder.encode(list(queries), kind="query")
        return [demb[[pos[d] for d in lst]] @ q for q, lst in zip(qemb, doc_lists)]


class BM25Teacher:
    name = "bm25"

    def __init__(self, retriever):
        self.r = retriever
        self.pos = {d: i for i, d in enumerate(retriever.doc_ids)}

    def score(self, queries: Sequence[str], doc_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        # the listed documents alone (not the whole corpus per query: label's cost grew with it)
        return [self.r.score_docs(q, [self.pos[d] for d in lst]) for q, lst in zip(queries, doc_lists)]


class _PairTeacher:
    """Base for models that score (query, passage text) pairs in batches."""

    name = "pair"

    def __init__(self, corpus: Mapping[str, Document], batch_size: int = 16, title_separator: str = " "):
        self.corpus, self.batch_size, self.sep = corpus, batch_size, title_separator

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        raise NotImplementedError

    def score(self, queries: Sequence[str], doc_lists: Sequence[Sequence[str]]) -> list[np.ndarray]:
        pairs = [(q, self.corpus[d].full_text(self.sep)) for q, lst in zip(queries, doc_lists) for d in lst]
        flat = self.score_pairs(pairs)
        out, i = [], 0
        for lst in doc_lists:
            out.append(flat[i : i + len(lst)])
            i += len(lst)
        return out


class CrossEncoderTeacher(_PairTeacher):
    """Any AutoModelForSequenceClassification reranker (1 logit, or 2 with "relevant" = index 1)."""

    def __init__(self, path: str, corpus, batch_size: int = 16, max_length: int = 512, device: str | None = None,
                 title_separator: str = " "):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        super().__init__(corpus, batch_size, title_separator)
        self.name = f"cross-encoder:{path}"
        self.device = resolve_device(device)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(self.device).eval()
        self.max_length = max_length

    @torch.inference_mode()
    def score_pairs(self, pairs):
        out = []
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s : s + self.batch_size]
            enc = self.tok([clip_text(q, self.max_length) for q, _ in chunk],
                           [clip_text(p, self.max_length) for _, p in chunk], truncation="only_second",
                           max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)
            logits = self.model(**enc).logits.float()
            out.append((logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


class T5Teacher(_PairTeacher):
    """monoT5 (``true``/``false`` logits) or RankT5 (``<extra_id_10>`` logit) rerankers."""

    def __init__(self, path: str, corpus, variant: str = "monot5", batch_size: int = 16, max_length: int = 512,
                 device: str | None = None, title_separator: str = " "):
        from transformers import AutoTokenizer, T5ForConditionalGeneration

        super().__init__(corpus, batch_size, title_separator)
        if variant not in ("monot5", "rankt5"):
            raise ConfigError(f"T5 teacher variant must be monot5 or rankt5, got {variant!r}")
        self.name = f"{variant}:{path}"
        self.variant = variant
        self.device = resolve_device(device)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = T5ForConditionalGeneration.from_pretrained(path).to(self.device).eval()
        self.max_length = max_length

        def tid(token: str) -> int:
            ids = self.tok.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise KadetError(f"{path}: tokenizer has no single token for {token!r}")
            return ids[0]

        if variant == "monot5":
            self.true_id, self.false_id = tid("true"), tid("false")
        else:
            self.score_id = tid("<extra_id_10>")

    def _input(self, q: str, p: str) -> str:
        return f"Query: {q} Document: {p} Relevant:" if self.variant == "monot5" else f"Query: {q} Document: {p}"

    @torch.inference_mode()
    def score_pairs(self, pairs):
        out = []
        start = self.model.config.decoder_start_token_id
        for s in range(0, len(pairs), self.batch_size):
            chunk = pairs[s : s + self.batch_size]
            texts = [self._input(clip_text(q, self.max_length), clip_text(p, self.max_length)) for q, p in chunk]
            enc = self.tok(texts, truncation=True, max_length=self.max_length, padding=True,
                           return_tensors="pt").to(self.device)
            dec = torch.full((len(chunk), 1), start, dtype=torch.long, device=self.device)
            logits = self.model(**enc, decoder_input_ids=dec).logits[:, 0, :].float()
            if self.variant == "monot5":
                two = torch.log_softmax(logits[:, [self.true_id, self.false_id]], dim=-1)
                out.append(two[:, 0].cpu().numpy())
            else:
                out.append(logits[:, self.score_id].cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


QL_TEMPLATE = "Passage: {passage}\nA question that this passage answers:"
#: The query tokens the ``ql`` teacher scores (the rest of a longer query is ignored).
QUERY_TOKENS = 64


class QueryLikelihoodTeacher(_PairTeacher):
    """mean log P(query tokens | passage prompt) from a causal LM (UPR / ART style).

    ``score_pairs`` uses prefix caching (one forward per distinct passage, its KV cache
    reused for all its queries) and computes vocabulary logits only at the positions that
    predict query tokens. ``score_pairs_naive`` runs every full sequence and the full LM
    head; both give the same scores (tested to 1e-4 in fp32).
    """

    def __init__(self, model: str, corpus, cache_dir: str | Path, batch_size: int = 32,
                 max_passage_tokens: int = 256, device: str | None = None, template: str = QL_TEMPLATE,
                 title_separator: str = " ", prefix_batch: int = 8):
        from kadet.llm.causal import load_causal_lm

        super().__init__(corpus, batch_size, title_separator)
        self.name = "ql"
        self.device = resolve_device(device)
        self.model, self.tok = load_causal_lm(model, Path(cache_dir), self.device)
        self.template = template
        self.max_passage_tokens = max_passage_tokens
        self.prefix_batch = prefix_batch

    # -- tokenisation shared by both paths, so token boundaries are identical
    def _prefix_ids(self, passage: str) -> list[int]:
        passage = clip_text(passage, self.max_passage_tokens)
        ids = self.tok.encode(passage, add_special_tokens=False)[: self.max_passage_tokens]
        text = self.tok.decode(ids)
        return self.tok.encode(self.template.format(passage=text), add_special_tokens=False)

    def _query_ids(self, query: str) -> list[int]:
        return self.tok.encode(" " + clip_text(query, QUERY_TOKENS).strip(), add_special_tokens=False)[:QUERY_TOKENS] \
            or [self.tok.eos_token_id]

    @torch.inference_mode()
    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Prefix-cached scoring.

        Distinct passages are processed ``prefix_batch`` at a time: their prompts run once,
        right-padded, and their KV caches are kept. Then the (passage, query) pairs of those
        passages run ``batch_size`` at a time on top of the gathered caches, each query placed
        right after its own prompt (per-row position ids; the prompts' padding is masked).
        The LM head is applied only at positions that predict a query token.
        """
        from transformers import DynamicCache

        scores = np.zeros(len(pairs), dtype=np.float64)
        by_passage: dict[str, list[int]] = defaultdict(list)
        for i, (_, p) in enumerate(pairs):
            by_passage[p].append(i)
        prefixes = {p: self._prefix_ids(p) for p in by_passage}
        passages = sorted(by_passage, key=lambda p: len(prefixes[p]))  # similar lengths pad less
        body, head, dev = self.model.model, self.model.lm_head, self.device
        pad = self.tok.pad_token_id or 0
        for s in range(0, len(passages), self.prefix_batch):
            group = passages[s : s + self.prefix_batch]
            lens = torch.tensor([len(prefixes[p]) for p in group], device=dev)
            width = int(lens.max())
            ids = torch.full((len(group), width), pad, dtype=torch.long, device=dev)
            pmask = torch.zeros_like(ids)
            for r, p in enumerate(group):
                ids[r, : lens[r]] = torch.tensor(prefixes[p], device=dev)
                pmask[r, : lens[r]] = 1
            pre = body(input_ids=ids, attention_mask=pmask, use_cache=True)
            kv = [(layer.keys, layer.values) for layer in pre.past_key_values.layers]
            last = pre.last_hidden_state[torch.arange(len(group), device=dev), lens - 1]
            first_logp = torch.log_softmax(head(last).float(), dim=-1)       # predicts query token 0
            rows = [(r, i) for r, p in enumerate(group) for i in by_passage[p]]
            for c in range(0, len(rows), self.batch_size):
                chunk = rows[c : c + self.batch_size]
                owner = torch.tensor([r for r, _ in chunk], device=dev)
                qids = [self._query_ids(pairs[i][0]) for _, i in chunk]
                b, n = len(chunk), max(map(len, qids))
                q = torch.full((b, n), pad, dtype=torch.long, device=dev)
                qmask = torch.zeros((b, n), dtype=torch.long, device=dev)
                for r, x in enumerate(qids):
                    q[r, : len(x)] = torch.tensor(x, device=dev)
                    qmask[r, : len(x)] = 1
                cache = DynamicCache(ddp_cache_data=[(k[owner], v[owner]) for k, v in kv])
                mask = torch.cat([pmask[owner], qmask], dim=1)
                pos = lens[owner].unsqueeze(1) + torch.arange(n, device=dev).unsqueeze(0)
                hidden = body(input_ids=q, attention_mask=mask, position_ids=pos, past_key_values=cache,
                              use_cache=True).last_hidden_state
                sel = qmask[:, 1:].bool()  # hidden[:, j] predicts query token j+1
                logp = torch.log_softmax(head(hidden[:, :-1][sel]).float(), dim=-1)
                tok_lp = logp.gather(1, q[:, 1:][sel].unsqueeze(1)).squeeze(1).double()
                per_row = first_logp[owner, q[:, 0]].double()
                per_row = per_row.index_add(0, sel.nonzero()[:, 0], tok_lp)
                scores[[i for _, i in chunk]] = (per_row / qmask.sum(1).double()).cpu().numpy()
        return scores

    @torch.inference_mode()
    def score_pairs_naive(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Reference: each (passage prompt + query) sequence in full, LM head at every position."""
        scores = np.zeros(len(pairs), dtype=np.float64)
        for s in range(0, len(pairs), self.batch_size):
            chunk = list(range(s, min(s + self.batch_size, len(pairs))))
            seqs = [(self._prefix_ids(pairs[i][1]), self._query_ids(pairs[i][0])) for i in chunk]
            n = max(len(p) + len(q) for p, q in seqs)
            ids = torch.full((len(chunk), n), self.tok.pad_token_id or 0, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(ids)
            for r, (p, q) in enumerate(seqs):
                ids[r, : len(p) + len(q)] = torch.tensor(p + q)
                mask[r, : len(p) + len(q)] = 1
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for r, (p, q) in enumerate(seqs):
                positions = torch.arange(len(p) - 1, len(p) + len(q) - 1, device=self.device)
                scores[chunk[r]] = logp[r, positions, torch.tensor(q, device=self.device)].double().mean().item()
        return scores


class EnsembleTeacher:
    """Weighted sum of per-query z-normalised member scores."""

    def __init__(self, members: Mapping[str, Teacher], weights: Mapping[str, float]):
        self.members, self.weights = dict(members), dict(weights)
        self.name = "ensemble(" + ",".join(f"{k}={v:g}" for k, v in self.weights.items()) + ")"

    def score(self, queries, doc_lists):
        total = [np.zeros(len(lst)) for lst in doc_lists]
        for name, teacher in self.members.items():
            w = self.weights.get(name, 0.0)
            if w == 0:
                continue
            for acc, s in zip(total, teacher.score(queries, doc_lists)):
                acc += w * znorm(s)
        return total


def build_teacher(spec: str, cfg, corpus: Mapping[str, Document], cache: dict | None = None,
                  wrap=None) -> Teacher:
    """A teacher from its name (see the module table); ``cache`` shares built members; ``wrap(spec,
    teacher)``, if given, wraps each model teacher (not an ensemble, not BM25, whose scores
    depend on the whole corpus's statistics): kadet/stages/label/stage.py keeps their scores across runs."""
    cache = {} if cache is None else cache
    if spec in cache:
        return cache[spec]
    if spec == "ensemble":
        members = {name: build_teacher(name, cfg, corpus, cache, wrap) for name, w in cfg.label.ensemble.items() if w}
        teacher = EnsembleTeacher(members, cfg.label.ensemble)
    else:
        teacher = _member(spec, cfg, corpus)
        if wrap is not None and spec != "bm25":
            teacher = wrap(spec, teacher)
    cache[spec] = teacher
    return teacher


def _member(spec: str, cfg, corpus: Mapping[str, Document]) -> Teacher:
    lab = cfg.label
    kind, _, arg = spec.partition(":")
    if kind == "dense":
        from kadet.kit.encode import Encoder

        teacher = DenseTeacher(Encoder.from_config(cfg, arg or None), corpus, cfg.data.title_separator)
    elif spec == "bm25":
        from kadet.kit.search import BM25Retriever

        teacher = BM25Teacher(BM25Retriever.from_config(corpus, cfg))
    elif kind == "ql":
        teacher = QueryLikelihoodTeacher(arg or lab.llm_model, corpus, cfg.cache_dir, lab.batch_size,
                                         lab.max_passage_tokens, lab.device, title_separator=cfg.data.title_separator)
    elif kind == "cross-encoder":
        teacher = CrossEncoderTeacher(arg, corpus, lab.batch_size, device=lab.device,
                                      title_separator=cfg.data.title_separator)
    elif kind in ("monot5", "rankt5"):
        teacher = T5Teacher(arg, corpus, kind, lab.batch_size, device=lab.device,
                            title_separator=cfg.data.title_separator)
    else:
        raise ConfigError(f"label.teacher: unknown teacher {spec!r} ({', '.join(TEACHERS)})")
    return teacher
