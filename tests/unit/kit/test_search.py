"""Dense encoding and cache, exact search, BM25 and reciprocal rank fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kadet.kit.data import load_beir
from kadet.kit.encode import EmbeddingCache, Encoder
from kadet.kit.search import BM25Retriever, DenseRetriever, exact_search, ranked, reciprocal_rank_fusion, top_k


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
    res = exact_search(qs, docs, ids, top_k=5, chunk=3)
    ref = qs @ docs.T
    for row, r in zip(ref, res):
        assert list(r) == [ids[i] for i in np.argsort(-row)[:5]]
        assert list(r.values()) == pytest.approx(sorted(row, reverse=True)[:5], rel=1e-5)
    assert len(exact_search(qs, docs[:3], ids[:3], top_k=10)[0]) == 3


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
