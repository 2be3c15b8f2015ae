"""Retrievers: dense search (exact, or an approximate faiss index for large corpora), BM25 (``bm25s``) and reciprocal rank fusion.

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


#: Scores held at once by :func:`exact_search` (queries x documents of one block): 2^26 floats, 256 MiB.
SCORE_BUDGET = 1 << 26


def exact_topk(query_emb: np.ndarray, doc_emb: np.ndarray, top_k: int,
               budget: int = SCORE_BUDGET) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, indices)`` (queries x k, best first) of the top-k documents by inner product.

    Queries x documents in blocks of at most ``budget`` scores, so memory stays bounded whatever
    the corpus size: each block's top-k (``torch.topk``) is merged into the running top-k.
    """
    n = len(doc_emb)
    k = min(top_k, n)
    nq = len(query_emb)
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.zeros((nq, k), dtype=np.int64)
    if k == 0 or nq == 0:
        return out_s, out_i
    doc_block = max(k, min(n, budget // 64))               # >= 64 queries per block
    q_block = max(1, min(1024, budget // doc_block))
    for ds in range(0, n, doc_block):
        docs = torch.from_numpy(np.ascontiguousarray(doc_emb[ds : ds + doc_block], dtype=np.float32))
        kb = min(k, len(docs))
        for qs in range(0, nq, q_block):
            q = torch.from_numpy(np.ascontiguousarray(query_emb[qs : qs + q_block], dtype=np.float32))
            s, i = torch.topk(q @ docs.T, kb, dim=1)
            s, i = s.numpy(), i.numpy() + ds
            if ds == 0:
                out_s[qs : qs + len(q), :kb], out_i[qs : qs + len(q), :kb] = s, i
                continue
            # merge with the best so far; a stable sort keeps the earlier (lower-index) block first on ties
            both_s = np.concatenate([out_s[qs : qs + len(q)], s], axis=1)
            both_i = np.concatenate([out_i[qs : qs + len(q)], i], axis=1)
            order = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
            out_s[qs : qs + len(q)] = np.take_along_axis(both_s, order, axis=1)
            out_i[qs : qs + len(q)] = np.take_along_axis(both_i, order, axis=1)
    return out_s, out_i


def exact_search(
    query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: Sequence[str], top_k: int, budget: int = SCORE_BUDGET
) -> list[dict[str, float]]:
    """Top-k by inner product (cosine for normalised embeddings), exactly: :func:`exact_topk`."""
    scores, idx = exact_topk(query_emb, doc_emb, top_k, budget)
    return [{doc_ids[i]: float(s) for s, i in zip(srow, irow)} for srow, irow in zip(scores.tolist(), idx.tolist())]


#: From this many documents up, ``index="auto"`` searches an approximate (IVF) index.
APPROXIMATE_FROM = 500_000


class DenseIndex:
    """Inner-product top-k over document embeddings: exact (blocked matmul) below
    ``approximate_from`` documents, above it a faiss IVF-Flat index (``nlist`` = sqrt(n)
    clusters, k-means on a sample, ``nprobe`` of them searched per query: an eighth by default). ``info`` says which
    was used and, for the approximate index, its recall@k against exact search measured on a
    sample of each search's own queries::

        index = DenseIndex(doc_emb)                 # exact for a small corpus
        scores, idx = index.search(query_emb, 100)
        index.info                                  # {"kind": "exact", "documents": ...}
    """

    def __init__(self, doc_emb: np.ndarray, kind: str = "auto", approximate_from: int = APPROXIMATE_FROM,
                 nprobe: int = 0, seed: int = 0, recall_sample: int = 64):
        if kind not in ("auto", "exact", "ivf"):
            raise ValueError(f"index kind must be auto, exact or ivf, got {kind!r}")
        self.doc_emb = doc_emb
        n = len(doc_emb)
        self.kind = kind if kind != "auto" else ("ivf" if n >= approximate_from else "exact")
        self.info: dict = {"kind": self.kind, "documents": n}
        self.recall_sample, self.seed = recall_sample, seed
        self._ivf = None
        if self.kind == "ivf":
            self._build_ivf(nprobe)

    def _build_ivf(self, nprobe: int) -> None:
        import faiss

        x = np.ascontiguousarray(self.doc_emb, dtype=np.float32)
        n, d = x.shape
        nlist = max(1, min(n // 39, int(np.sqrt(n))))          # faiss wants >= 39 training points per cluster
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(self.seed)
        train = x if n <= 64 * nlist else x[np.sort(rng.choice(n, 64 * nlist, replace=False))]
        ivf.cp.seed = self.seed
        ivf.train(train)
        ivf.add(x)
        ivf.nprobe = nprobe or max(1, -(-nlist // 8))
        self._ivf = ivf
        self.info.update({"nlist": nlist, "nprobe": int(ivf.nprobe)})

    def search(self, query_emb: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)``, queries x min(k, n), best first."""
        if self._ivf is None:
            return exact_topk(query_emb, self.doc_emb, top_k)
        k = min(top_k, len(self.doc_emb))
        q = np.ascontiguousarray(query_emb, dtype=np.float32)
        scores, idx = self._ivf.search(q, k)
        self._measure_recall(q, idx, k)
        return scores, idx

    def _measure_recall(self, q: np.ndarray, idx: np.ndarray, k: int) -> None:
        """Recall@k of the approximate results against exact search on a sample of the queries."""
        if not len(q):
            return
        rng = np.random.default_rng(self.seed)
        pick = np.sort(rng.choice(len(q), min(len(q), self.recall_sample), replace=False))
        _, exact = exact_topk(q[pick], self.doc_emb, k)
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(idx[pick], exact))
        self.info[f"recall@{k}_vs_exact"] = round(hits / (len(pick) * k), 4)
        self.info["recall_queries"] = len(pick)


class DenseRetriever:
    """Encodes the corpus once (through the encoder's cache) and searches it: exactly, or with
    ``index="auto"`` approximately from ``approximate_from`` documents up (:class:`DenseIndex`)."""

    name = "dense"

    def __init__(self, encoder: Encoder, corpus: Mapping[str, Document], title_separator: str = " ",
                 index: str = "exact", approximate_from: int = APPROXIMATE_FROM, nprobe: int = 0):
        self.encoder = encoder
        self.doc_ids = list(corpus)
        texts = [corpus[d].full_text(title_separator) for d in self.doc_ids]
        self.doc_emb = encoder.encode(texts, kind="document")
        del texts
        self.index = DenseIndex(self.doc_emb, index, approximate_from, nprobe)

    @classmethod
    def from_config(cls, encoder: Encoder, corpus: Mapping[str, Document], cfg) -> "DenseRetriever":
        """A dense retriever with the ``retrieval`` settings of a :class:`~kadet.core.config.KadetConfig`."""
        r = cfg.retrieval
        return cls(encoder, corpus, cfg.data.title_separator, r.index, r.approximate_from, r.nprobe)

    def search(self, queries: Mapping[str, str], top_k: int) -> Run:
        qids = list(queries)
        q_emb = self.encoder.encode([queries[q] for q in qids], kind="query")
        scores, idx = self.index.search(q_emb, top_k)
        return {qid: {self.doc_ids[i]: float(s) for s, i in zip(srow, irow) if i >= 0}
                for qid, srow, irow in zip(qids, scores.tolist(), idx.tolist())}


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

    def score_docs(self, query: str, positions: Sequence[int]) -> np.ndarray:
        """``score_all(query)[positions]`` without scoring the whole corpus: each query term's
        postings (document positions, sorted) are binary-searched for the listed documents, so
        the cost follows the query and the list, not the corpus."""
        (tokens,) = self._tokenize([query], ids=False)
        s = self.index.scores
        data, indices, indptr = s["data"], s["indices"], s["indptr"]
        pos = np.asarray(positions, dtype=indices.dtype)
        out = np.zeros(len(pos), dtype=data.dtype)          # summed term by term, as bm25s sums them
        for t in self.index.get_tokens_ids(tokens) if tokens else ():
            seg = indices[indptr[t] : indptr[t + 1]]
            if not len(seg):
                continue
            j = np.minimum(np.searchsorted(seg, pos), len(seg) - 1)
            found = seg[j] == pos
            out[found] += data[indptr[t] + j[found]]
        return out.astype(np.float64)

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
