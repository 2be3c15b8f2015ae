"""trec_eval metrics, the evaluate stage, and SciFact reference figures (slow)."""

from __future__ import annotations

import json
import math

import pytest

from kadet.core.config import load_config
from kadet.stages.evaluate import aggregate, drop_identical_ids, evaluate, format_table, per_query_metrics
from kadet.core.manifest import Manifest


def test_metrics_hand_computed():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0, "y": 1.0}, "q2": {"c": 5.0}}
    pq = per_query_metrics(qrels, run, ndcg_k=10, recall_k=100, mrr_k=10)
    # q1: relevant at rank 2 only -> DCG = 1/log2(3); IDCG = 1 + 1/log2(3)
    assert pq["q1"]["ndcg@10"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert pq["q1"]["recall@100"] == pytest.approx(0.5)
    assert pq["q1"]["mrr@10"] == pytest.approx(0.5)
    assert pq["q2"] == {"ndcg@10": 1.0, "recall@100": 1.0, "mrr@10": 1.0}
    # q3 retrieved nothing: it still counts, with zeros
    assert pq["q3"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    assert aggregate(pq)["recall@100"] == pytest.approx(0.5)


def test_mrr_is_cut_at_k():
    qrels = {"q": {"rel": 1}}
    run = {"q": {f"d{i}": 100.0 - i for i in range(12)} | {"rel": 1.0}}
    assert per_query_metrics(qrels, run, mrr_k=10)["q"]["mrr@10"] == 0.0
    assert per_query_metrics(qrels, run, mrr_k=20)["q"]["mrr@20"] == pytest.approx(1 / 13)


def test_drop_identical_ids():
    assert drop_identical_ids({"1": {"1": 2.0, "2": 1.0}}) == {"1": {"2": 1.0}}


def test_evaluate_tiny_writes_outputs(tiny_beir, tmp_path):
    cfg = load_config(None, [f"data.data_dir={tiny_beir}", f"work_dir={tmp_path / 'work'}", "retrieval.retriever=hybrid"])
    res = evaluate(cfg, output_dir=tmp_path / "out")
    assert res.metrics["ndcg@10"] == pytest.approx(1.0)
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["queries"] == 3 and summary["retriever"] == "hybrid"
    m = Manifest.read(tmp_path / "out")
    assert m.stage == "evaluate" and set(m.inputs) == {"corpus", "queries", "qrels"}
    assert m.config_hash == cfg.hash()
    lines = (tmp_path / "out" / "run.tsv").read_text().splitlines()
    assert lines[0].split("\t")[3] == "1"
    assert "ndcg@10" in format_table([("x", res.metrics)])


def test_compare_writes_the_comparison_it_returns(tiny_beir, tiny_st, tmp_path):
    """``comparison.json`` is :meth:`Comparison.to_json`: its keys in their order (``silver_dir``
    and ``by_type`` only where they apply), and reading it back gives the same comparison."""
    from kadet.kit.comparison import JSON_KEYS, Comparison
    from kadet.stages.evaluate import compare

    cfg = load_config(None, [f"data.data_dir={tiny_beir}", f"work_dir={tmp_path / 'work'}", f"retrieval.model={tiny_st}"])
    comp = compare(cfg, str(tiny_st), tmp_path / "ev")
    written = json.loads((tmp_path / "ev" / "comparison.json").read_text())
    assert list(written) == [k for k in JSON_KEYS if k not in ("silver_dir", "by_type")]
    assert Comparison.from_json(written) == comp and written == comp.to_json()
    assert comp.kind == "gold" and comp.queries == 3 and comp.models == {"base": str(tiny_st), "candidate": str(tiny_st)}
    assert comp.gain("ndcg@10")["mean"] == 0.0 and set(comp.retrievers) == {"dense", "hybrid", "bm25"}
    assert Manifest.read(tmp_path / "ev").extra == {"base": comp.base, "candidate": comp.candidate,
                                                    "eval_data": comp.eval_data}


def test_a_comparison_keeps_its_defaults_and_its_file_format():
    """What a comparison lacks takes one default, here (gold, dense, no gain); a silver one's
    ``comparison.json`` object goes through from_json/to_json unchanged, key order included."""
    from kadet.kit.comparison import JSON_KEYS, Comparison

    figures = {"ndcg@10": 0.5, "recall@100": 0.9}
    bare = Comparison.from_json({"base": figures, "candidate": figures})
    assert (bare.kind, bare.retriever, bare.queries, bare.eval_data, bare.silver_dir, bare.by_type) == \
        ("gold", "dense", None, "", "", None)
    assert bare.gain("ndcg@10") is None
    silver = {"eval_data": "sha256:x", "data_dir": "/d", "retriever": "dense", "split": "test", "queries": 4,
              "models": {"base": "b", "candidate": "c"}, "kind": "silver", "silver_dir": "silver", "base": figures,
              "candidate": figures, "delta": {"ndcg@10": {"mean": 0.0}}, "retrievers": {"bm25": figures},
              "by_type": {"claim": {"queries": 4, "base": 0.5, "candidate": 0.5}}, "seconds": 1.5}
    again = Comparison.from_json(silver).to_json()
    assert again == silver and list(again) == list(JSON_KEYS)


# Reference figures on BEIR SciFact test (300 queries); written down so a regression is loud.
SCIFACT_EXPECTED = {"dense": 0.6451, "bm25": 0.686, "hybrid": 0.717}


@pytest.mark.slow
@pytest.mark.parametrize("retriever", ["dense", "bm25", "hybrid"])
def test_scifact_reference_figures(scifact, shared_work, retriever):
    work = shared_work  # hybrid (and mining tests) reuse the dense embeddings
    cfg = load_config(None, [f"data.data_dir={scifact}", f"work_dir={work}", f"retrieval.retriever={retriever}"])
    res = evaluate(cfg)
    assert len(res.per_query) == 300
    tol = 0.002 if retriever == "dense" else 0.005
    assert res.metrics["ndcg@10"] == pytest.approx(SCIFACT_EXPECTED[retriever], abs=tol)


@pytest.mark.slow
def test_compare_reports_dense_hybrid_and_bm25_and_gates_on_the_configured_one(scifact, shared_work, tmp_path):
    """Every comparison measures the model alone and in hybrid (its dense run + BM25, RRF) with the
    same figures ``kadet evaluate --retriever`` gives; ``evaluation.retriever`` picks what the gate
    judges, and a hybrid gate's evaluation is another one than a dense gate's (eval_data)."""
    from kadet.stages.evaluate import compare

    cfg = load_config(None, [f"data.data_dir={scifact}", f"work_dir={shared_work}"])
    dense = compare(cfg, "all-MiniLM-L6-v2", tmp_path / "d")
    rets = dense.retrievers
    for r in ("dense", "hybrid"):
        assert rets[r]["candidate"]["ndcg@10"] == pytest.approx(SCIFACT_EXPECTED[r], abs=0.005)
        assert rets[r]["delta"]["ndcg@10"]["queries"] == 300
    assert rets["bm25"]["ndcg@10"] == pytest.approx(SCIFACT_EXPECTED["bm25"], abs=0.005)
    assert dense.base == rets["dense"]["base"] and dense.retriever == "dense"
    cfg.evaluation.retriever = "hybrid"
    hybrid = compare(cfg, "all-MiniLM-L6-v2", tmp_path / "h")
    assert hybrid.base == rets["hybrid"]["base"] and hybrid.retriever == "hybrid"
    assert hybrid.eval_data == dense.eval_data + "+hybrid"
