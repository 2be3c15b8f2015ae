"""Dense encoding and cache, exact search, BM25 and reciprocal rank fusion."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from kadet.kit.data import load_beir
from kadet.kit.encode import EmbeddingCache, Encoder
from kadet.kit.search import (BM25Retriever, bm25_scores, DenseIndex, DenseRetriever, exact_search, exact_topk, ranked,
                              reciprocal_rank_fusion, top_k)


def test_rrf_hand_computed():
    # run A ranks d1, d2, d3; run B ranks d3, d1 (d2 absent). K = 60.
    a = {"q": {"d1": 9.0, "d2": 5.0, "d3": 1.0}}
    b = {"q": {"d3": 0.9, "d1": 0.8}}
    fused = reciprocal_rank_fusion([a, b], k=60)["q"]
    assert fused["d1"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["d2"] == pytest.approx(1 / 62)
    assert fused["d3"] == pytest.approx(1 / 63 + 1 / 61)
    assert ranked(fused) == ["d1", "d3", "d2"]
    # depth=1 only counts each run's first document
    assert reciprocal_rank_fusion([a, b], k=60, depth=1)["q"] == pytest.approx({"d1": 1 / 61, "d3": 1 / 61})


def test_ranked_ties_are_deterministic_and_top_k():
    assert ranked({"b": 1.0, "a": 1.0, "c": 2.0}) == ["c", "a", "b"]
    assert top_k({"q": {"b": 1.0, "a": 1.0, "c": 2.0}}, 2) == {"q": {"c": 2.0, "a": 1.0}}


def test_exact_search_matches_numpy():
    rng = np.random.default_rng(0)
    docs, qs = rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(7, 8)).astype(np.float32)
    ids = [f"d{i}" for i in range(50)]
    res = exact_search(qs, docs, ids, top_k=5, budget=24)   # blocks of 8 documents x 3 queries
    ref = qs @ docs.T
    for row, r in zip(ref, res):
        assert list(r) == [ids[i] for i in np.argsort(-row)[:5]]
        assert list(r.values()) == pytest.approx(sorted(row, reverse=True)[:5], rel=1e-5)
    assert len(exact_search(qs, docs[:3], ids[:3], top_k=10)[0]) == 3


@pytest.mark.parametrize("budget", [10, 64, 700, 1 << 26])
def test_blocked_top_k_is_the_full_matrix_top_k(budget):
    # any block shape (documents in blocks of >= k, queries in blocks): the same ids and scores as
    # sorting the full queries x documents matrix; ties (duplicate documents) keep the lower index
    rng = np.random.default_rng(1)
    docs = rng.normal(size=(203, 6)).astype(np.float32)
    docs[150] = docs[3]                                     # a tie across blocks
    qs = rng.normal(size=(17, 6)).astype(np.float32)
    scores, idx = exact_topk(qs, docs, 10, budget=budget)
    full = qs @ docs.T
    for q in range(len(qs)):
        ref = np.argsort(-full[q], kind="stable")[:10]
        assert idx[q].tolist() == ref.tolist()
        assert scores[q] == pytest.approx(full[q][ref], rel=1e-5)
    assert exact_topk(qs, docs[:4], 10)[1].shape == (17, 4)  # k above the corpus size: all of it


def test_dense_index_is_exact_below_the_threshold_and_approximate_above():
    rng = np.random.default_rng(2)
    docs = rng.normal(size=(4000, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qs = docs[rng.choice(4000, 40, replace=False)] + 0.1 * rng.normal(size=(40, 16)).astype(np.float32)
    small = DenseIndex(docs, approximate_from=5000)
    assert small.info == {"kind": "exact", "documents": 4000}
    assert small.search(qs, 20)[1].tolist() == exact_topk(qs, docs, 20)[1].tolist()
    exact = exact_topk(qs, docs, 20)[1]
    fixed = DenseIndex(docs, kind="ivf", nprobe=2)           # a fixed probe count: no calibration
    assert fixed.info["kind"] == "ivf" and fixed.info["nlist"] == int(np.sqrt(4000)) and fixed.info["nprobe"] == 2
    scores, idx = fixed.search(qs, 20)
    assert idx.shape == (40, 20) and fixed.info["recall_queries"] == 40
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(idx.tolist(), exact.tolist())])
    assert fixed.info["recall@20_vs_exact"] == pytest.approx(recall, abs=1e-4) and recall < 0.9
    everything = DenseIndex(docs, kind="ivf", nprobe=fixed.info["nlist"])   # every cluster probed: exact
    assert everything.search(qs, 20)[1].tolist() == exact.tolist() and everything.info["recall@20_vs_exact"] == 1.0
    with pytest.raises(ValueError, match="auto, exact or ivf"):
        DenseIndex(docs, kind="hnsw")


def test_the_approximate_index_raises_its_probes_to_the_recall_target_or_searches_exactly():
    """auto from approximate_from up: probes raised until recall@k on the run's own queries (a
    sample) reaches the target; a target it cannot reach in a quarter of the clusters: exact search."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, 16)).astype(np.float32)           # clustered, as real embeddings are
    docs = centres[rng.integers(0, 40, 6000)] + 0.3 * rng.normal(size=(6000, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    qs = docs[rng.choice(6000, 200, replace=False)] + 0.05 * rng.normal(size=(200, 16)).astype(np.float32)
    exact = exact_topk(qs, docs, 10)[1]
    auto = DenseIndex(docs, approximate_from=5000, recall_target=0.95)
    idx = auto.search(qs, 10)[1]
    info = auto.info
    assert info["kind"] == "ivf" and info["recall_target"] == 0.95
    tried = info["calibrated"]                                      # probes tried -> recall on the sample
    assert list(tried)[0] == -(-info["nlist"] // 8) and info["nprobe"] == list(tried)[-1]
    assert tried[info["nprobe"]] >= 0.95 and all(r < 0.95 for r in list(tried.values())[:-1])
    assert info["recall@10_vs_exact"] >= 0.95 and info["recall_queries"] == 64
    whole = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx.tolist(), exact.tolist())])
    assert whole >= 0.9                                             # the sample speaks for the rest
    unreachable = DenseIndex(docs, approximate_from=5000, recall_target=1.01)
    assert unreachable.search(qs, 10)[1].tolist() == exact.tolist()
    assert unreachable.info["kind"] == "exact" and "exact search" in unreachable.info["why"]
    assert unreachable._ivf is None and unreachable.search(qs[:5], 10)[1].tolist() == exact[:5].tolist()
    assert max(unreachable.info["calibrated"]) <= unreachable.info["nlist"] / 4


@pytest.mark.parametrize("method,stemmer,stopwords", [("lucene", "english", "en"), ("bm25+", "", "en"),
                                                    ("robertson", "english", ""), ("bm25l", "english", "en"),
                                                    ("atire", "", "")])
def test_bm25_built_from_compact_ids_scores_as_bm25s_own_index(monkeypatch, method, stemmer, stopwords):
    """The streamed, compact build (tokenize_corpus + bm25_scores) against bm25s's own
    tokenize + index, bit for bit: empty and stopword-only documents, repeated and stemmed words,
    documents split over several chunks."""
    import bm25s
    import Stemmer

    from kadet.kit import search
    from kadet.kit.data import Document

    monkeypatch.setattr(search, "bm25_scores", functools.partial(bm25_scores, chunk_docs=3))   # several chunks
    texts = ["The cats are running to the houses.", "", "the and of", "Running runs ran runner; cat's CAT cat",
             "Houses house housing x y zz"] + [f"doc {i} about cats and protein folding {i % 7} {i % 3}" for i in range(40)]
    corpus = {f"d{i}": Document(f"d{i}", "", t) for i, t in enumerate(texts)}
    ours = BM25Retriever(corpus, method=method, stemmer=stemmer, stopwords=stopwords)
    stem = Stemmer.Stemmer(stemmer) if stemmer else None
    ref = bm25s.BM25(method=method)
    ref.index(bm25s.tokenize(texts, stopwords=stopwords or None, stemmer=stem, show_progress=False), show_progress=False)
    for q in ["cats running", "house", "protein 3", "the", "zz unknown", "cat cat folding 2"]:
        (tokens,) = bm25s.tokenize([q], stopwords=stopwords or None, stemmer=stem, return_ids=False, show_progress=False)
        expected = ref.get_scores(tokens) if tokens else np.zeros(len(texts))
        assert np.array_equal(ours.score_all(q), expected), q
        assert ours.score_docs(q, range(len(texts))).tolist() == expected.astype(np.float64).tolist()
    assert ours.index.scores["data"].nbytes == ref.scores["data"].nbytes      # the same entries, no more


def test_bm25_finds_the_matching_document(tiny_beir):
    ds = load_beir(tiny_beir)
    bm25 = BM25Retriever(ds.corpus)
    run = bm25.search({q: v.text for q, v in ds.queries.items()}, top_k=10)
    for q, rels in ds.qrels.items():
        assert ranked(run[q])[0] == next(iter(rels))
    # stemming: "fractures" and "fracture" match
    assert "d2" in bm25.search({"x": "fracture"}, 5)["x"]
    assert bm25.search({"x": "zebra"}, 5)["x"] == {}


@pytest.fixture(scope="module")
def minilm():
    return Encoder("all-MiniLM-L6-v2", device="cpu")


def test_encoder_matches_sentence_transformers(minilm):
    texts = ["a short one", "a rather longer sentence about vitamin D and bone fractures " * 3, "mid length text"]
    ours = minilm.encode(texts)
    ref = minilm.model.encode(texts, convert_to_numpy=True)
    assert ours.shape == (3, 384) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-5
    # duplicates come back in input order
    again = minilm.encode([texts[2], texts[0], texts[2]])
    assert np.allclose(again, ours[[2, 0, 2]], atol=1e-6)


def test_token_budget_batches(minilm):
    old = minilm.batch_size, minilm.max_tokens
    try:
        minilm.batch_size, minilm.max_tokens = 3, 100
        # sorted: 1(50) 3(40) 2(20) 0(10) 4 5 6 7(5); a batch costs n x its first (longest) length
        assert minilm._batches([10, 50, 20, 40, 5, 5, 5, 5]) == [[1, 3], [2, 0, 4], [5, 6, 7]]
    finally:
        minilm.batch_size, minilm.max_tokens = old


def test_embedding_cache_avoids_recomputation(tmp_path, minilm, monkeypatch):
    enc = Encoder("all-MiniLM-L6-v2", device="cpu", cache_dir=tmp_path / "cache")
    calls: list[int] = []
    real = enc._forward
    monkeypatch.setattr(enc, "_forward", lambda texts, prompt, task: calls.append(len(texts)) or real(texts, prompt, task))
    first = enc.encode(["alpha", "beta"])
    second = enc.encode(["beta", "gamma", "alpha"])
    assert calls == [2, 1]
    assert np.allclose(second[[0, 2]], first[[1, 0]])
    # a new encoder over the same folder reads the cache from disk
    enc2 = Encoder("all-MiniLM-L6-v2", device="cpu", cache_dir=tmp_path / "cache")
    monkeypatch.setattr(enc2, "_forward", lambda *a: pytest.fail("should have hit the cache"))
    assert np.allclose(enc2.encode(["gamma"]), second[1])
    # queries and documents are cached apart (prompts may differ)
    q = Encoder("all-MiniLM-L6-v2", device="cpu", cache_dir=tmp_path / "cache", query_prompt="query: ")
    assert not np.allclose(q.encode(["alpha"], kind="query"), first[0])


def test_embedding_cache_store(tmp_path):
    c = EmbeddingCache(tmp_path, "ns")
    keys = [b"a" * 20, b"b" * 20]
    c.put(keys, np.eye(2, dtype=np.float32))
    mask, found = EmbeddingCache(tmp_path, "ns").get([b"b" * 20, b"c" * 20])
    assert mask.tolist() == [True, False] and found.tolist() == [[0.0, 1.0]]
    c.put([b"c" * 20], np.full((1, 2), 7, dtype=np.float32))      # a second part
    out = np.full((4, 2), -1, dtype=np.float32)
    mask, found = EmbeddingCache(tmp_path, "ns").get([b"c" * 20, b"x" * 20, b"a" * 20, b"b" * 20], out=out)
    assert found is None and mask.tolist() == [True, False, True, True]
    assert out.tolist() == [[7, 7], [-1, -1], [1, 0], [0, 1]]              # written in place, misses untouched


def test_encoding_in_chunks_is_encoding_at_once(minilm, monkeypatch):
    import kadet.kit.encode as encode

    texts = [f"passage {i} about {'cells ' * (i % 7)}and genes" for i in range(23)] + ["passage 1 about cells and genes"]
    whole = minilm.encode(texts)
    monkeypatch.setattr(encode, "ENCODE_CHUNK", 5)
    chunked = minilm.encode(texts)
    assert chunked.shape == (24, minilm.dim) and np.allclose(chunked, whole, atol=1e-5)


def test_dense_retriever_on_tiny(tiny_beir, minilm):
    ds = load_beir(tiny_beir)
    run = DenseRetriever(minilm, ds.corpus).search({q: v.text for q, v in ds.queries.items()}, 2)
    for q, rels in ds.qrels.items():
        assert ranked(run[q])[0] == next(iter(rels))
        assert len(run[q]) == 2


def test_encoder_routes_asymmetric_models(tmp_path, minilm):
    from sentence_transformers import SentenceTransformer

    from kadet.stages.distill import save_query_side_model

    with torch.no_grad():  # make the query tower differ from the document tower
        q_model = SentenceTransformer(str(minilm.path), device="cpu")
        for p in q_model.parameters():
            p.mul_(0.9)
    save_query_side_model(q_model, minilm.path, tmp_path / "router", 64)
    enc = Encoder(tmp_path / "router", device="cpu")
    texts = ["does aspirin prevent heart attacks", "vitamin d"]
    r = SentenceTransformer(str(tmp_path / "router"), device="cpu")
    assert np.abs(enc.encode(texts, kind="query") - r.encode_query(texts)).max() < 1e-5
    assert np.abs(enc.encode(texts, kind="document") - minilm.encode(texts)).max() < 1e-5
    assert np.abs(enc.encode(texts, kind="query") - minilm.encode(texts)).max() > 1e-3


def test_a_huge_document_is_cut_before_the_tokenizer_sees_it(tiny_st, tmp_path, monkeypatch):
    """Was: a 7.7 MB document went to the tokenizer whole (peak memory 2.3x) and was truncated after.
    Now no text longer than ``max_seq_length x CHARS_PER_TOKEN`` characters reaches a tokenizer,
    on the encoder's own path and on a Router's (sentence-transformers' preprocessing), and the
    embedding is the one of the document's first tokens, as before."""
    from sentence_transformers import SentenceTransformer
    from transformers import PreTrainedTokenizerBase

    from kadet.kit.encode import CHARS_PER_TOKEN
    from kadet.stages.distill import save_query_side_model

    seen = []
    real = PreTrainedTokenizerBase.__call__

    def recording(self, text=None, *args, **kwargs):
        texts = [text] if isinstance(text, str) else list(text or [])
        seen.append(max((len(t) for t in texts if isinstance(t, str)), default=0))
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", recording)
    words = "aspirin reduces the risk of heart attack in adults and vitamin d deficiency "
    huge = words * (5_000_000 // len(words))                     # ~5 MB, one document
    plain = Encoder(tiny_st, device="cpu")                          # max_seq_length 64
    bound = 64 * CHARS_PER_TOKEN
    emb = plain.encode([huge, huge[:bound]])
    assert max(seen) <= bound and np.abs(emb[0] - emb[1]).max() < 1e-6
    q_model = SentenceTransformer(str(tiny_st), device="cpu")
    save_query_side_model(q_model, tiny_st, tmp_path / "router", 16)   # the Router: preprocessed by ST
    seen.clear()
    router = Encoder(tmp_path / "router", device="cpu")
    queries, docs = router.encode([huge, huge[:16 * CHARS_PER_TOKEN]], "query"), router.encode([huge], "document")
    assert 0 < max(seen) <= bound and np.abs(queries[0] - queries[1]).max() < 1e-6
    np.testing.assert_allclose(docs[0], emb[0], atol=1e-6)        # the document tower: the base model's cut
