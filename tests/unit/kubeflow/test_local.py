"""``kadet run``'s summary reads the run's own outputs: the evaluate task's typed comparison and the
pre-flight task's figures, from the task folders the local runner wrote (not MLflow metric names)."""

from __future__ import annotations

import json

from kadet.core.io import write_json
from kadet.kit.comparison import SILVER_CAVEAT, Comparison
from kadet.kubeflow.local import comparison_summary, read_comparison, read_preflight


def _run_outputs(tmp_path, kind="gold"):
    run = tmp_path / "kfp" / "kadet-20261207"
    comp = Comparison(base={"ndcg@10": 0.60, "recall@100": 0.90}, candidate={"ndcg@10": 0.62, "recall@100": 0.91},
                      kind=kind, retriever="dense", queries=3,
                      delta={"ndcg@10": {"mean": 0.02, "ci_low": 0.001, "ci_high": 0.04}},
                      retrievers={"dense": {"base": {"ndcg@10": 0.60}, "candidate": {"ndcg@10": 0.62}},
                                  "bm25": {"ndcg@10": 0.55}})
    write_json(run / "evaluate" / "report" / "comparison.json", comp.to_json())
    write_json(run / "preflight" / "report" / "preflight.json",
               {"base": 0.6, "teacher": 0.65, "lead": 0.05, "ci_low": 0.01, "ci_high": 0.09, "go": True})
    return run


def test_the_summary_is_the_comparison_the_evaluate_task_wrote(tmp_path):
    run = _run_outputs(tmp_path)
    comp = read_comparison(run)
    assert isinstance(comp, Comparison) and comp.queries == 3
    s = comparison_summary(comp, "ndcg@10")
    assert s["base"]["ndcg@10"] == 0.60 and s["candidate"]["recall@100"] == 0.91
    assert s["gain_ci"] == [0.001, 0.04] and s["eval_kind"] == "gold" and s["gate_retriever"] == "dense"
    assert s["retrievers"]["bm25"] == {"ndcg@10": 0.55} and "caveat" not in s
    assert read_preflight(run) == {"base": 0.6, "teacher": 0.65, "lead": 0.05, "lead_ci_low": 0.01,
                                   "lead_ci_high": 0.09}


def test_a_silver_run_carries_the_caveat_and_a_stopped_run_has_no_evaluation(tmp_path):
    assert comparison_summary(read_comparison(_run_outputs(tmp_path, "silver")), "ndcg@10")["caveat"] == SILVER_CAVEAT
    stopped = tmp_path / "kfp" / "kadet-stopped"
    stopped.mkdir(parents=True)
    assert read_comparison(stopped) is None and read_preflight(stopped) == {}
    assert comparison_summary(None, "ndcg@10")["base"] == {} and read_comparison(None) is None
    assert json.loads(json.dumps(comparison_summary(None, "ndcg@10")))["gain_ci"] is None
