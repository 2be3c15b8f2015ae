"""The pre-flight check: the teacher's lead over the base on judged queries, and the stop it drives."""

from __future__ import annotations

import shutil

import pytest

from kadet.core.config import load_config, profile_config
from kadet.stages.preflight import check, teacher_lead, verdict
from tests.doubles.data import scifact_slice


def _cfg(data, work, *extra):
    return load_config(None, [f"data.data_dir={data}", f"work_dir={work}", "label.rerank_depth=20", *extra],
                       base=profile_config("local"))


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory, scifact):
    return scifact_slice(tmp_path_factory.mktemp("pf") / "data", n_queries=40, n_docs=300)


def test_the_lead_is_the_teacher_reports_ensemble_minus_its_base_row(slice_dir, tmp_path):
    """The pre-flight's figures are `kadet teacher-report`'s rows for the configured teacher at
    label.rerank_depth (they share base_top_k / per_query_ndcg): the same candidates, the same
    teacher, and the lead is their difference."""
    from kadet.tools.teacher_report import teacher_report

    cfg = _cfg(slice_dir, tmp_path / "w")
    lead = teacher_lead(cfg)
    rep = teacher_report(cfg, ["ensemble"], split="test", depth=20)
    base_row, ens_row = rep["rows"][0], rep["rows"][-1]
    assert lead["queries"] == rep["queries"] == 40 and lead["depth"] == 20
    assert lead["base"] == pytest.approx(base_row["ndcg"], abs=1e-9)
    assert lead["teacher"] == pytest.approx(ens_row["ndcg"], abs=1e-9)
    assert lead["lead"] == pytest.approx(ens_row["ndcg"] - base_row["ndcg"], abs=1e-9)
    assert lead["ci_low"] <= lead["lead"] <= lead["ci_high"]


def test_a_teacher_that_is_the_base_model_leaves_nothing_to_learn(slice_dir, tmp_path):
    """label.teacher=dense is the base model's own cosine: it reorders nothing, so the lead is 0
    on every query, and the check says to stop, with the figures and what to do."""
    cfg = _cfg(slice_dir, tmp_path / "w", "label.teacher=dense")
    result = check(cfg, tmp_path / "out")
    assert result["lead"] == 0 and result["ci_low"] == result["ci_high"] == 0
    assert result["go"] is False
    assert result["message"].startswith("nothing to learn: the teacher (dense)")
    assert "on 40 judged queries" in result["message"] and "distill.preflight=false" in result["message"]
    assert (tmp_path / "out" / "preflight.json").exists()
    from kadet.core.manifest import Manifest

    m = Manifest.read(tmp_path / "out")              # a stage like the others: its manifest next to its file
    assert m.stage == "preflight" and m.counts == {"judged_queries": 40} and m.extra["go"] is False
    # switched off, there is nothing to measure and the run goes on
    assert check(_cfg(slice_dir, tmp_path / "w", "label.teacher=dense", "distill.preflight=false")) is None


def test_without_judged_queries_there_is_no_lead_to_measure(slice_dir, tmp_path):
    (tmp_path / "corpus-only").mkdir()
    shutil.copy(slice_dir / "corpus.jsonl", tmp_path / "corpus-only" / "corpus.jsonl")
    assert check(_cfg(tmp_path / "corpus-only", tmp_path / "w"), tmp_path / "out") is None
    from kadet.core.manifest import Manifest

    assert Manifest.read(tmp_path / "out").extra == {"measured": False, "why": "no judged queries (silver run)"}


@pytest.mark.parametrize("low, floor, go", [(0.001, 0.0, True), (0.0, 0.0, False), (-0.01, 0.0, False),
                                            (0.004, 0.005, False), (0.006, 0.005, True)])
def test_go_only_when_the_whole_interval_is_above_the_floor(low, floor, go, tmp_path):
    cfg = load_config(None, [f"distill.min_teacher_lead={floor}"])
    lead = {"base": 0.6, "teacher": 0.62, "lead": 0.02, "ci_low": low, "ci_high": 0.05, "queries": 300,
            "depth": 30, "teacher_name": "ensemble", "metric": "ndcg@10"}
    ok, sentence = verdict(cfg, lead)
    assert ok is go
    assert sentence.startswith("pre-flight: ") if go else sentence.startswith("nothing to learn: ")
    assert "[+0.0" in sentence or "[-0.0" in sentence           # the interval is in the sentence


def test_the_console_says_how_much_of_the_lead_the_candidate_kept():
    from kadet.stages.preflight import kept_text

    pre = {"lead": 0.04, "lead_ci_low": 0.02, "lead_ci_high": 0.06}
    assert kept_text(pre, 0.01) == ("teacher lead over the base (reranking its top-k, judged queries): +0.0400 "
                                    "[+0.0200, +0.0600]; the candidate (dense) kept 25% of it")
    assert "kept" not in kept_text({**pre, "lead": -0.01}, 0.01)
    assert kept_text({}, 0.01).startswith("teacher lead: not measured")
