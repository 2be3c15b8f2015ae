"""Retrievers: exact dense search, BM25 (``bm25s``) and reciprocal rank fusion.

A *run* maps each query id to ``{doc_id: score}`` (higher is better), the format
``pytrec_eval`` reads::

    dense = DenseRetriever(encoder, corpus)
    bm25 = BM25Retriever(corpus)
    fused = reciprocal_rank_fusion([dense.search(q, 100), bm25.search(q, 100)], k=60)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from kadet.kit.data import Document
from kadet.kit.encode import Encoder

log = logging.getLogger(__name__)

#: A TREC run, a retriever's output: ``{qid: {doc_id: score}}`` (not a pipeline run).
Run = dict[str, dict[str, float]]


def ranked(scores: Mapping[str, float]) -> list[str]:
    """Doc ids by decreasing score; ties broken by doc id so rankings are deterministic."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def exact_search(
    query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: Sequence[str], top_k: int, chunk: int = 1024
) -> list[dict[str, float]]:
    """Top-k by inner product (cosine for normalised embeddings) with a torch matmul."""
    k = min(top_k, len(doc_ids))
    docs = torch.from_numpy(np.ascontiguousarray(doc_emb, dtype=np.float32))
    results: list[dict[str, float]] = []
    for start in range(0, len(query_emb), chunk):
        q = torch.from_numpy(np.ascontiguousarray(query_emb[start : start + chunk], dtype=np.float32))
        scores, idx = torch.topk(q @ docs.T, k, dim=1)
        for srow, irow in zip(scores.tolist(), idx.tolist()):
            results.append({doc_ids[i]: float(s) for s, i in zip(srow, irow)})
    return results


class DenseRetriever:
    """Encodes the corpus once (through the encoder's cache) and searches it exactly."""

    name = "dense"

    def __init__(self, encoder: Encoder, corpus: Mapping[str, Document], title_separator: str = " "):
        self.encoder = encoder
        self.doc_ids = list(corpus)
        texts = [corpus[d].full_text(title_separator) for d in self.doc_ids]
        self.doc_emb = encoder.encode(texts, kind="document")

    def search(self, queries: Mapping[str, str], top_k: int) -> Run:
        qids = list(queries)
        q_emb = self.encoder.encode([queries[q] for q in qids], kind="query")
        return dict(zip(qids, exact_search(q_emb, self.doc_emb, self.doc_ids, top_k)))


class BM25Retriever:
    """Okapi BM25 from ``bm25s`` with Snowball stemming and English stopwords by default."""

    name = "bm25"

    def __init__(
        self,
        corpus: Mapping[str, Document],
        method: str = "lucene",
        k1: float = 1.5,
        b: float = 0.75,
        stemmer: str = "english",
        stopwords: str = "en",
        title_separator: str = " ",
    ):
        import bm25s

        self._bm25s = bm25s
        self.stemmer = None
        if stemmer:
            import Stemmer

            self.stemmer = Stemmer.Stemmer(stemmer)
        self.stopwords = stopwords or None
        self.doc_ids = list(corpus)
        tokens = bm25s.tokenize(
            [corpus[d].full_text(title_separator) for d in self.doc_ids],
            stopwords=self.stopwords,
            stemmer=self.stemmer,
            show_progress=False,
        )
        self.index = bm25s.BM25(method=method, k1=k1, b=b)
        self.index.index(tokens, show_progress=False)

    @classmethod
    def from_config(cls, corpus: Mapping[str, Document], cfg) -> "BM25Retriever":
        """BM25 with the ``retrieval`` settings of a :class:`~kadet.core.config.KadetConfig`."""
        r = cfg.retrieval
        return cls(corpus, r.bm25_method, r.bm25_k1, r.bm25_b, r.bm25_stemmer, r.bm25_stopwords,
                   cfg.data.title_separator)

    def _tokenize(self, texts: list[str], ids: bool = True):
        return self._bm25s.tokenize(texts, stopwords=self.stopwords, stemmer=self.stemmer, return_ids=ids,
                                    show_progress=False)

    def score_all(self, query: str) -> np.ndarray:
        """The BM25 score of ``query`` against every document, in ``doc_ids`` order."""
        (tokens,) = self._tokenize([query], ids=False)
        return self.index.get_scores(tokens) if tokens else np.zeros(len(self.doc_ids))

    def search(self, queries: Mapping[str, str], top_k: int) -> Run:
        qids = list(queries)
        if not qids:
            return {}
        tokens = self._tokenize([queries[q] for q in qids])
        k = min(top_k, len(self.doc_ids))
        idx, scores = self.index.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        run: Run = {}
        for qid, irow, srow in zip(qids, idx, scores):
            # bm25s pads with score 0 when fewer documents match; keep only real matches
            run[qid] = {self.doc_ids[int(i)]: float(s) for i, s in zip(irow, srow) if s > 0}
        return run


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = 60, depth: int | None = None) -> Run:
    """RRF (Cormack et al., 2009): ``score(d) = sum over runs of 1 / (k + rank(d))``, ranks from 1.

    Only the first ``depth`` documents of each run count (all when ``None``).
    """
    fused: Run = {}
    for run in runs:
        for qid, scores in run.items():
            acc = fused.setdefault(qid, {})
            order = ranked(scores)
            if depth is not None:
                order = order[:depth]
            for rank, doc_id in enumerate(order, start=1):
                acc[doc_id] = acc.get(doc_id, 0.0) + 1.0 / (k + rank)
    return fused


def top_k(run: Run, k: int) -> Run:
    """Keep the best ``k`` documents of each query."""
    return {qid: {d: scores[d] for d in ranked(scores)[:k]} for qid, scores in run.items()}
