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
#: The recall@k against exact search that a calibrated IVF index must reach on the run's own queries.
RECALL_TARGET = 0.99
#: A calibrated IVF index probing more than this share of its clusters saves nothing: exact search.
#: Measured (benchmarks/ann_recall.py, 1M passages, 2 cores): IVF probing an eighth took 52% of
#: exact search's time (a probed pair costs ~4x a pair of the blocked matmul), so break-even is ~1/4.
MOST_PROBED = 0.25


class DenseIndex:
    """Inner-product top-k over document embeddings: exact (blocked matmul), or a faiss IVF-Flat
    index (``nlist`` = sqrt(n) clusters, k-means on a sample). ``kind="auto"``: exact below
    ``approximate_from`` documents; above it IVF, *calibrated* on each search: the probes are
    raised (an eighth of the clusters, then a sixteenth more at a time) until recall@k against
    exact search, measured on a sample of that search's own queries, reaches ``recall_target``;
    when that takes more than a quarter of the clusters (:data:`MOST_PROBED`) the search is
    exact. A fixed ``nprobe`` (> 0) skips the calibration (recall still measured). ``info`` says
    which index searched, its probes and its measured recall::

        index = DenseIndex(doc_emb)                 # exact for a small corpus
        scores, idx = index.search(query_emb, 100)
        index.info                                  # {"kind": "exact", "documents": ...}
    """

    def __init__(self, doc_emb: np.ndarray, kind: str = "auto", approximate_from: int = APPROXIMATE_FROM,
                 nprobe: int = 0, seed: int = 0, recall_sample: int = 64, recall_target: float = RECALL_TARGET):
        if kind not in ("auto", "exact", "ivf"):
            raise ValueError(f"index kind must be auto, exact or ivf, got {kind!r}")
        self.doc_emb = doc_emb
        n = len(doc_emb)
        self.kind = kind if kind != "auto" else ("ivf" if n >= approximate_from else "exact")
        self.info: dict = {"kind": self.kind, "documents": n}
        self.recall_sample, self.seed, self.recall_target = recall_sample, seed, recall_target
        self.calibrate = nprobe <= 0
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
        ivf.nprobe = min(nlist, nprobe) if nprobe > 0 else max(1, -(-nlist // 8))
        self._ivf = ivf
        self.info.update({"nlist": nlist, "nprobe": int(ivf.nprobe)})

    def search(self, query_emb: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, indices)``, queries x min(k, n), best first."""
        if self._ivf is None:
            return exact_topk(query_emb, self.doc_emb, top_k)
        k = min(top_k, len(self.doc_emb))
        q = np.ascontiguousarray(query_emb, dtype=np.float32)
        if not len(q):
            return exact_topk(q, self.doc_emb, k)
        pick, exact = self._exact_sample(q, k)
        if self.calibrate and not self._calibrate(q[pick], exact, k):
            self._ivf = None                                  # refused: its memory back, later searches exact
            return exact_topk(q, self.doc_emb, k)
        scores, idx = self._ivf.search(q, k)
        self._note_recall(idx[pick], exact, k)
        return scores, idx

    def _exact_sample(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        pick = np.sort(rng.choice(len(q), min(len(q), self.recall_sample), replace=False))
        return pick, exact_topk(q[pick], self.doc_emb, k)[1]

    @staticmethod
    def _recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(found, exact))
        return hits / (len(exact) * k)

    def _calibrate(self, sample: np.ndarray, exact: np.ndarray, k: int) -> bool:
        """Raise the probes until the sample's recall reaches the target; False: exact search pays."""
        nlist = self.info["nlist"]
        step = max(1, -(-nlist // 16))
        probes = max(1, -(-nlist // 8))
        tried = {}
        while True:
            self._ivf.nprobe = probes
            tried[probes] = round(self._recall(self._ivf.search(sample, k)[1], exact, k), 4)
            if tried[probes] >= self.recall_target:
                self.info.update({"nprobe": probes, "calibrated": tried, "recall_target": self.recall_target})
                return True
            if probes + step > MOST_PROBED * nlist:
                break
            probes += step
        self.info.update({"kind": "exact", "calibrated": tried, "recall_target": self.recall_target,
                          "why": f"IVF reached recall@{k} {max(tried.values()):.3f} < {self.recall_target} "
                                 f"probing {probes} of {nlist} clusters: exact search"})
        self.info.pop("nprobe", None)
        return False

    def _note_recall(self, found: np.ndarray, exact: np.ndarray, k: int) -> None:
        """Recall@k of the approximate results against exact search on the sampled queries."""
        self.info[f"recall@{k}_vs_exact"] = round(self._recall(found, exact, k), 4)
        self.info["recall_queries"] = len(exact)


def describe_index(info: Mapping) -> str:
    """One line for a person: which dense index searched (:attr:`DenseIndex.info`) and how well."""
    n = f"{info.get('documents', 0):,} documents"
    if info.get("kind") == "ivf":
        k = next((key.split("@")[1].split("_")[0] for key in info if key.startswith("recall@")), "k")
        recall = next((v for key, v in info.items() if key.startswith("recall@")), None)
        line = f"an approximate faiss IVF index over {n}, {info.get('nprobe')} of {info.get('nlist')} clusters probed"
        if recall is not None:
            line += (f": recall@{k} {recall:.3f} against exact search on {info.get('recall_queries')} queries of "
                     "this run")
        return line
    return f"exact search over {n}" + (f" ({info['why']})" if info.get("why") else "")


class DenseRetriever:
    """Encodes the corpus once (through the encoder's cache) and searches it: exactly, or with
    ``index="auto"`` approximately from ``approximate_from`` documents up (:class:`DenseIndex`)."""

    name = "dense"

    def __init__(self, encoder: Encoder, corpus: Mapping[str, Document], title_separator: str = " ",
                 index: str = "auto", approximate_from: int = APPROXIMATE_FROM, nprobe: int = 0,
                 recall_target: float = RECALL_TARGET):
        self.encoder = encoder
        self.doc_ids = list(corpus)
        texts = [corpus[d].full_text(title_separator) for d in self.doc_ids]
        self.doc_emb = encoder.encode(texts, kind="document")
        del texts
        self.index = DenseIndex(self.doc_emb, index, approximate_from, nprobe, recall_target=recall_target)

    @classmethod
    def from_config(cls, encoder: Encoder, corpus: Mapping[str, Document], cfg,
                    index: str | None = None) -> "DenseRetriever":
        """A dense retriever with the ``retrieval`` settings of a :class:`~kadet.core.config.KadetConfig`
        (``index`` overrides ``retrieval.index``: evaluation searches exactly)."""
        r = cfg.retrieval
        return cls(encoder, corpus, cfg.data.title_separator, index or r.index, r.approximate_from, r.nprobe,
                   r.recall_target)

    def search(self, queries: Mapping[str, str], top_k: int) -> Run:
        qids = list(queries)
        q_emb = self.encoder.encode([queries[q] for q in qids], kind="query")
        scores, idx = self.index.search(q_emb, top_k)
        return {qid: {self.doc_ids[i]: float(s) for s, i in zip(srow, irow) if i >= 0}
                for qid, srow, irow in zip(qids, scores.tolist(), idx.tolist())}


class TokenIds(Sequence):
    """A corpus's token ids, compact: one int32 array and the documents' offsets into it (4 bytes a
    token, where the lists of Python ints ``bm25s.tokenize`` makes take ~36). Item i: document
    i's ids."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]


def tokenize_corpus(texts, stopwords: str | None, stemmer, chunk: int = 1 << 20) -> tuple[TokenIds, dict[str, int]]:
    """``texts`` (any iterable: read once) to compact token ids and the vocabulary, the same tokens
    as ``bm25s.tokenize`` (its pattern, lower case, its stopword lists, the stemmer on each
    distinct word); memory: the ids at 4 bytes a token, the vocabulary, never the texts at once."""
    import re

    from bm25s.tokenization import _infer_stopwords

    split = re.compile(r"(?u)\b\w\w+\b").findall
    stop = set(_infer_stopwords(stopwords))
    word_id: dict[str, int] = {}              # a word as written -> its (stemmed) token id
    vocab: dict[str, int] = {}                # a token (stem) -> its id
    parts: list[np.ndarray] = []
    buf: list[int] = []
    lengths: list[int] = []
    for text in texts:
        start = len(buf)
        for word in split(text.lower()):
            tid = word_id.get(word)
            if tid is None:
                if word in stop:
                    continue
                token = stemmer.stemWord(word) if stemmer is not None else word
                tid = word_id[word] = vocab.setdefault(token, len(vocab))
            buf.append(tid)
        lengths.append(len(buf) - start)
        if len(buf) >= chunk:
            parts.append(np.asarray(buf, dtype=np.int32))
            buf = []
    parts.append(np.asarray(buf, dtype=np.int32))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenIds(np.concatenate(parts), offsets), vocab


def bm25_scores(bm, ids: TokenIds, n_vocab: int, chunk_docs: int = 8_192) -> dict:
    """The score matrix ``bm25s.BM25.build_index_from_ids`` builds (CSC: per token, the documents
    that hold it, in order, and their BM25 scores), with bm25s's own idf and term-frequency
    formulas (``bm.method``, ``k1``, ``b``, ``delta``), written straight into its final arrays:
    memory is the matrix (8 bytes an entry) and one chunk of documents, where bm25s holds three
    entry-sized arrays and scipy's copies (~40 bytes an entry at its peak)."""
    from bm25s import scoring

    flat, offsets = ids.flat, ids.offsets
    n_docs = len(ids)
    lengths = np.diff(offsets)
    avg_doc_len = lengths.mean() if n_docs else np.float64(0)

    def entries(lo: int, hi: int):
        """(document, token, term frequency) of documents lo..hi, by document then token."""
        doc = np.repeat(np.arange(lo, hi, dtype=np.int64), lengths[lo:hi])
        keys = np.unique(doc * n_vocab + flat[offsets[lo] : offsets[hi]], return_counts=True)
        return keys[0] // n_vocab, keys[0] % n_vocab, keys[1]

    df = np.zeros(n_vocab, dtype=np.int64)
    for lo in range(0, n_docs, chunk_docs):
        df += np.bincount(entries(lo, min(n_docs, lo + chunk_docs))[1], minlength=n_vocab)
    frequencies = dict(enumerate(df.tolist()))
    idf = scoring._build_idf_array(frequencies, n_docs, scoring._select_idf_scorer(bm.idf_method), bm.dtype)
    bm.nonoccurrence_array = None
    if bm.method in bm.methods_requiring_nonoccurrence:
        bm.nonoccurrence_array = scoring._build_nonoccurrence_array(
            frequencies, n_docs, scoring._select_idf_scorer(bm.idf_method), scoring._select_tfc_scorer(bm.method),
            avg_doc_len, avg_doc_len, bm.k1, bm.b, bm.delta, bm.dtype)
    tfc = scoring._select_tfc_scorer(bm.method)
    indptr = np.zeros(n_vocab + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    data = np.empty(int(indptr[-1]), dtype=bm.dtype)
    indices = np.empty(int(indptr[-1]), dtype=bm.int_dtype)
    fill = indptr[:-1].copy()                         # the next free place in each token's column
    for lo in range(0, n_docs, chunk_docs):
        doc, tok, tf = entries(lo, min(n_docs, lo + chunk_docs))
        # as bm25s scores each document: tfc(tf as float32, its length, the mean length) x idf
        sc = (idf[tok] * tfc(tf_array=tf.astype(bm.dtype), l_d=lengths[doc].astype(np.float64),
                             l_avg=avg_doc_len, k1=bm.k1, b=bm.b, delta=bm.delta))
        if bm.nonoccurrence_array is not None:
            sc -= bm.nonoccurrence_array[tok]
        order = np.argsort(tok, kind="stable")            # by token, documents ascending within each
        tok, doc, sc = tok[order], doc[order], sc[order]
        starts = np.searchsorted(tok, np.arange(n_vocab + 1))
        rank = np.arange(len(tok)) - starts[tok]          # place within the token's run in this chunk
        at = fill[tok] + rank
        data[at], indices[at] = sc, doc
        fill += np.diff(starts)
    return {"data": data, "indices": indices, "indptr": indptr, "num_docs": n_docs}


class BM25Retriever:
    """Okapi BM25 from ``bm25s`` with Snowball stemming and English stopwords by default. The corpus
    is tokenized as a stream into compact ids (:func:`tokenize_corpus`): at 1M passages the
    tokens take ~0.6 GB, not the ~5 GB of ``bm25s.tokenize``'s lists."""

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
        ids, vocab = tokenize_corpus((corpus[d].full_text(title_separator) for d in self.doc_ids),
                                     self.stopwords, self.stemmer)
        self.index = bm25s.BM25(method=method, k1=k1, b=b)
        # what BM25.index does with (ids, vocab), over the compact ids
        self.index.scores = bm25_scores(self.index, ids, len(vocab))
        del ids
        vocab.setdefault("", max(vocab.values(), default=-1) + 1)
        self.index.vocab_dict = vocab
        self.index.unique_token_ids_set = set(vocab.values())

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
        ids = self.index.get_tokens_ids(tokens) if tokens else []
        for t in ids:
            seg = indices[indptr[t] : indptr[t + 1]]
            if not len(seg):
                continue
            j = np.minimum(np.searchsorted(seg, pos), len(seg) - 1)
            found = seg[j] == pos
            out[found] += data[indptr[t] + j[found]]
        if self.index.nonoccurrence_array is not None and ids:   # BM25L, BM25+: every document's floor
            out += self.index.nonoccurrence_array[np.asarray(ids, dtype=indices.dtype)].sum()
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
