"""Mining: round-trip filter modes, fusion, candidate count, and no leaked test passages."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from kadet.core.config import load_config
from kadet.kit.data import Document, load_beir
from kadet.core.errors import ConfigError
from kadet.core.io import write_jsonl
from kadet.core.manifest import Manifest
from kadet.stages.mine import mine, mine_candidates, round_trip_ok
from kadet.stages.prepare import prepare


def test_round_trip_modes():
    runs = {"dense": {"q": {"s": 0.9, "x": 0.5}}, "bm25": {"q": {"x": 3.0, "y": 2.0, "s": 1.0}}}
    hits = Counter()
    assert round_trip_ok("s", runs, "q", 1, "any", hits) and hits == {"dense": 1, "bm25": 0}
    assert not round_trip_ok("s", runs, "q", 1, "all", Counter())
    assert round_trip_ok("s", runs, "q", 3, "all", Counter())
    assert round_trip_ok("zzz", runs, "q", 1, "off", Counter())
    with pytest.raises(ConfigError, match="'mine.round_trip' = 'some' must be one of any, all, off"):
        load_config(None, ["mine.round_trip=some"])              # checked once, at load, before any retrieval


class Table:
    def __init__(self, run):
        self.run = run

    def search(self, queries, k):
        return {q: dict(list(self.run.get(q, {}).items())[:k]) for q in queries}


def test_mine_candidates_filters_and_fuses():
    corpus = {d: Document(d, d) for d in "abcdefgh"}
    retrievers = {
        "dense": Table({"q1": {"a": 0.9, "b": 0.8, "c": 0.7}, "q2": {"e": 0.9, "f": 0.8}, "q3": {"a": 0.9}}),
        "bm25": Table({"q1": {"c": 9.0, "a": 8.0, "d": 7.0}, "q2": {"f": 9.0, "g": 1.0}, "q3": {"b": 1.0}}),
    }
    queries = [{"qid": "q1", "text": "x", "type": "claim", "source_doc_id": "a"},
               {"qid": "q2", "text": "y", "type": "claim", "source_doc_id": "a"},   # source not retrieved
               {"qid": "q3", "text": "z", "type": "claim", "source_doc_id": "a"},   # too few candidates
               {"qid": "q4", "text": "w", "type": "claim", "source_doc_id": "zz"}]  # unknown source
    cfg = load_config(None, ["mine.min_candidates=3", "mine.round_trip_depth=2"])
    m = Manifest(stage="mine")
    rows = mine_candidates(cfg, queries, corpus, retrievers, m)
    assert [r["qid"] for r in rows] == ["q1"]
    assert m.dropped == {"round_trip": 1, "too_few_candidates": 1, "source_not_in_corpus": 1}
    # RRF: a = 1/61 + 1/62, c = 1/63 + 1/61, b = 1/62, d = 1/63
    assert [c["doc_id"] for c in rows[0]["candidates"]] == ["a", "c", "b", "d"]
    assert rows[0]["candidates"][0]["rrf"] == pytest.approx(1 / 61 + 1 / 62, abs=1e-8)
    assert m.extra["round_trip_hits"] == {"dense": 2, "bm25": 1}


@pytest.mark.slow
def test_mine_on_scifact_never_returns_test_positives(scifact, tmp_path, shared_work):
    cfg = load_config(None, [f"data.data_dir={scifact}", f"work_dir={shared_work}", "prepare.sample_size=30",
                             "mine.min_candidates=20"])
    prepare(cfg, tmp_path / "prepare")
    passages = [json.loads(l) for l in (tmp_path / "prepare" / "passages.jsonl").read_text().splitlines()]
    positives = {d for rels in load_beir(scifact, "test").qrels.values() for d, s in rels.items() if s > 0}
    # queries made from the passages' titles: a real round trip, and off-topic ones that fail it
    queries = [{"qid": f"g{i}", "text": p["title"], "type": "title", "source_doc_id": p["_id"]}
               for i, p in enumerate(passages)]
    queries.append({"qid": "off", "text": "recipe for banana bread", "type": "web",
                    "source_doc_id": passages[0]["_id"]})
    write_jsonl(tmp_path / "queries.jsonl", queries)
    m = mine(cfg, tmp_path / "queries.jsonl", tmp_path / "prepare" / "corpus.jsonl", tmp_path / "mine")
    rows = [json.loads(l) for l in (tmp_path / "mine" / "candidates.jsonl").read_text().splitlines()]
    assert m.counts["kept"] == len(rows) >= 25 and m.dropped.get("round_trip", 0) >= 1
    assert "off" not in {r["qid"] for r in rows}
    for r in rows:
        ids = [c["doc_id"] for c in r["candidates"]]
        assert 20 <= len(ids) <= 100 and len(set(ids)) == len(ids)
        assert not set(ids) & positives
        assert r["source_doc_id"] in ids


def test_mine_candidates_fuses_each_query_once(monkeypatch):
    """Linear cost: the rankings are fused once for all queries, not once per query (was quadratic)."""
    import kadet.stages.mine as mine_mod

    calls = []
    real = mine_mod.reciprocal_rank_fusion
    monkeypatch.setattr(mine_mod, "reciprocal_rank_fusion", lambda runs, **kw: calls.append(1) or real(runs, **kw))
    corpus = {d: Document(d, d) for d in "abcdefgh"}
    run = {f"q{i}": {d: 1.0 / (j + 1) for j, d in enumerate("abcdefgh")} for i in range(50)}
    queries = [{"qid": f"q{i}", "text": "x", "type": "claim", "source_doc_id": "a"} for i in range(50)]
    cfg = load_config(None, ["mine.min_candidates=3"])
    rows = mine_candidates(cfg, queries, corpus, {"dense": Table(run), "bm25": Table(run)}, Manifest(stage="mine"))
    assert len(rows) == 50 and len(calls) == 1


def test_mine_above_approximate_from_searches_a_calibrated_index_and_says_so(tmp_path, tiny_st):
    """retrieval.index=auto (the default) from approximate_from documents up: the manifest says
    which index searched, its probes, the recall it measured against exact search on the run's
    own queries, and the candidates are those of exact search when it reached recall 1."""
    rng = __import__("random").Random(0)
    words = [f"w{i}" for i in range(300)]
    corpus = [{"_id": f"d{i}", "title": "", "text": " ".join(rng.choices(words, k=30))} for i in range(400)]
    write_jsonl(tmp_path / "corpus.jsonl", corpus)
    queries = [{"qid": f"q{i}", "text": " ".join(corpus[i]["text"].split()[:8]), "type": "keywords",
                "source_doc_id": f"d{i}"} for i in range(0, 400, 4)]
    write_jsonl(tmp_path / "queries.jsonl", queries)
    runs = {}
    for kind in ("exact", "auto"):
        cfg = load_config(None, [f"retrieval.model={tiny_st}", "retrieval.approximate_from=100", f"retrieval.index={kind}",
                                 "retrieval.recall_target=1.0", "mine.round_trip=off", f"work_dir={tmp_path / 'w'}"])
        m = mine(cfg, tmp_path / "queries.jsonl", tmp_path / "corpus.jsonl", tmp_path / kind)
        runs[kind] = (tmp_path / kind / "candidates.jsonl").read_text()
        info = Manifest.read(tmp_path / kind).extra["dense_index"]["dense"]
        if kind == "exact":
            assert info == {"kind": "exact", "documents": 400}
            continue
        # 400 documents: 10 clusters; probes raised from 2 until recall 1.0 or past half: exact
        assert info["nlist"] == 10 and list(info["calibrated"])[0] == "2" and info["recall_target"] == 1.0
        if info["kind"] == "ivf":
            assert info["recall@100_vs_exact"] == 1.0 and info["recall_queries"] == 64
        else:
            assert "exact search" in info["why"] and max(map(int, info["calibrated"])) <= 5
    assert runs["auto"] == runs["exact"]          # recall 1.0 reached, or exact search: the same candidates
