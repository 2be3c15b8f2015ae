"""The run's decision as Markdown for the KFP run page, one text per branch (the tasks that write
it: tests/unit/kubeflow/test_pipeline.py; the real DAG's: tests/system/test_pipeline.py), and the
links in it and in report.html: the MLflow UI at tracking.ui_url."""

from __future__ import annotations

from kadet.kit.comparison import Comparison
from kadet.reporting import summary

LINKS = {"MLflow run": "https://mlflow.example.com/#/experiments/1/runs/abc"}
GAIN = {"mean": 0.0139, "ci_low": 0.0005, "ci_high": 0.0277, "queries": 300, "confidence": 0.9}
METRICS = ("ndcg@10", "recall@100")


def _comparison() -> Comparison:
    return Comparison.from_json({"kind": "gold", "queries": 300, "base": {"ndcg@10": 0.6451, "recall@100": 0.925},
                                 "candidate": {"ndcg@10": 0.659, "recall@100": 0.921}, "delta": {"ndcg@10": GAIN}})


def test_nothing_new_names_the_version():
    text = summary.no_change("kadet-embedding", "3", "no change since version 3: the corpus holds ...", LINKS)
    assert text.startswith("## No change since v3\n")
    assert "`kadet-embedding` v3 stays as it is" in text
    assert "- MLflow run: [https://mlflow.example.com/#/experiments/1/runs/abc](https://mlflow.example.com/" in text


def test_nothing_to_learn_leads_with_the_lead_and_its_interval():
    pre = {"base": 0.61, "teacher": 0.61, "lead": 0.0, "ci_low": -0.012, "ci_high": 0.011, "queries": 50,
           "metric": "ndcg@10"}
    text = summary.nothing_to_learn("nothing to learn: the teacher (bm25) ...", pre, {"MLflow run": "runs:/abc"})
    assert text.startswith("## Nothing to learn: lead +0.0000 [-0.0120, +0.0110]\n")
    assert "| teacher | 0.6100 |" in text and "| judged queries | 50 |" in text and "nDCG@10" in text
    assert "nothing to learn: the teacher (bm25) ..." in text and "- MLflow run: `runs:/abc`" in text
    assert summary.nothing_to_learn("why", {}, {}).startswith("## Nothing to learn\n\nwhy")   # no figures: the reason


def test_the_gate_passed_and_failed_with_their_figures_and_outcome():
    gate = {"promote": True, "reason": "passed (gold: judged queries)", "version": "4", "model_name": "kadet-embedding",
            "incumbent": "champion v3", "incumbent_metrics": {"ndcg@10": 0.65, "recall@100": 0.92}, "links": LINKS}
    passed = summary.gate_decision(_comparison(), gate, METRICS, LINKS)
    assert passed.startswith("## Gate passed: v4\n") and "against champion v3, on gold evaluation (300 queries)" in passed
    assert "| nDCG@10 | Recall@100 |" in passed and "| champion v3 | 0.6500 | 0.9200 |" in passed
    assert "| delta | +0.0090 | +0.0010 |" in passed and "[+0.0005, +0.0277]" in passed
    assert "**Gate:** passed (gold: judged queries)" in passed
    assert summary.outcome(passed, True, "4").endswith("**Outcome:** v4 is the champion now.\n")
    moved = summary.outcome(passed, False, "4", "the champion moved to v5 meanwhile")
    assert moved.endswith("**Outcome:** v4 was not promoted: the champion moved to v5 meanwhile\n")
    failed = summary.gate_decision(_comparison(), {**gate, "promote": False, "reason": "nDCG@10 0.6590 below ..."},
                                   METRICS, LINKS)
    assert failed.startswith("## Gate failed: v4 kept as challenger\n") and "**Gate:** nDCG@10 0.6590 below" in failed
    assert summary.outcome(failed, False, "4").endswith("**Outcome:** v4 is the challenger; the champion stays.\n")
    first = summary.gate_decision(_comparison(), {**gate, "incumbent": "base model", "incumbent_metrics": None},
                                  METRICS, LINKS)
    assert "| candidate | 0.6590 | 0.9210 |" in first and "| delta |" not in first


def test_links_point_at_the_mlflow_ui_people_open(tmp_path, monkeypatch):
    """Was: report links pointed at the tracking URI, on a cluster the in-cluster MLflow address a
    browser cannot open. Now tracking.ui_url (default $KADET_MLFLOW_UI_URL) is where they point."""
    from kadet.core.config import load_config
    from kadet.registry import tracking

    monkeypatch.delenv("KADET_MLFLOW_UI_URL", raising=False)
    cfg = load_config(None, [f"work_dir={tmp_path}"])
    assert cfg.tracking.ui_url == ""
    local = tracking.links(cfg, "run-1", "kadet-embedding", "4")
    assert local["MLflow run"].startswith("runs:/") and local["model version"] == "models:/kadet-embedding/4"
    ui = load_config(None, [f"work_dir={tmp_path}", "tracking.ui_url=https://mlflow.example.com/"])
    got = tracking.links(ui, "run-1", "kadet-embedding", "4")
    parent = tracking.parent_run_id(cfg, "run-1")
    assert got == {"MLflow run": f"https://mlflow.example.com/#/experiments/{tracking.experiment_id(cfg)}/runs/{parent}",
                   "model version": "https://mlflow.example.com/#/models/kadet-embedding/versions/4"}
    assert set(tracking.links(ui, "run-1")) == {"MLflow run"}                       # a run without a version
    monkeypatch.setenv("KADET_MLFLOW_UI_URL", "https://ml.example.org")
    assert load_config(None, [f"work_dir={tmp_path}"]).tracking.ui_url == "https://ml.example.org"


def test_the_parent_run_carries_the_kfp_run_id(tmp_path, monkeypatch):
    """A cluster pod knows its KFP run (KADET_KFP_RUN_ID from its pipeline/runid label): the MLflow
    parent run is tagged with it, whichever task creates or first finds it."""
    from kadet.core.config import load_config
    from kadet.registry import tracking

    cfg = load_config(None, [f"work_dir={tmp_path}"])
    monkeypatch.delenv(tracking.KFP_RUN_ENV, raising=False)
    first = tracking.parent_run_id(cfg, "wf-abc")
    assert tracking.KFP_RUN_TAG not in tracking.client(cfg).get_run(first).data.tags
    monkeypatch.setenv(tracking.KFP_RUN_ENV, "5f0c-run")
    assert tracking.parent_run_id(cfg, "wf-abc") == first
    assert tracking.client(cfg).get_run(first).data.tags[tracking.KFP_RUN_TAG] == "5f0c-run"
    other = tracking.parent_run_id(cfg, "wf-def")
    assert tracking.client(cfg).get_run(other).data.tags[tracking.KFP_RUN_TAG] == "5f0c-run"
