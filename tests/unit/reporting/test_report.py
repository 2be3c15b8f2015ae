"""report.html's rendering from a run's records (the real run's page is checked in
tests/system/test_pipeline.py, parsed, with its images)."""

from __future__ import annotations

from kadet.kit.comparison import Comparison, gain_text
from kadet.core.config import load_config
from kadet.reporting.report import SECTIONS, render

GAIN = {"mean": 0.0139, "ci_low": 0.0005, "ci_high": 0.0277, "p_ahead": 0.96, "queries": 300, "confidence": 0.9}


def test_the_page_has_every_section_the_champion_row_links_and_escapes_text():
    cfg = load_config(None, [])
    comparison = Comparison.from_json({"kind": "gold", "queries": 300, "base": {"ndcg@10": 0.6451, "recall@100": 0.925, "mrr@10": 0.6},
                  "candidate": {"ndcg@10": 0.659, "recall@100": 0.921, "mrr@10": 0.62},
                  "delta": {"ndcg@10": GAIN},
                  "by_type": {"sentence": {"queries": 10, "base": 0.5, "candidate": 0.6}},
                  "retrievers": {"dense": {"base": {"ndcg@10": 0.6451}, "candidate": {"ndcg@10": 0.659}},
                                 "hybrid": {"base": {"ndcg@10": 0.7171}, "candidate": {"ndcg@10": 0.7141}},
                                 "bm25": {"ndcg@10": 0.6863}}})
    run = {"pipeline_run": "r1", "parent_run": "abc",
           "stages": [{"name": "preflight", "seconds": 200.0, "status": "FINISHED", "tags": {},
                       "metrics": {"preflight.lead": 0.0488, "preflight.lead_ci_low": 0.0334,
                                   "preflight.lead_ci_high": 0.0653, "preflight.base": 0.6, "preflight.teacher": 0.65}},
                      {"name": "label-merge", "seconds": 1.5, "status": "FINISHED",
                       "metrics": {"dropped.teacher_inconsistent": 12.0, "dropped.low_top_score": 0.0}, "tags": {}}],
           "files": {"queries_sample.json": {"columns": ["qid", "type", "text", "source_doc_id"],
                                             "data": [[f"q{i}", "sentence", f"<script>x{i}</script>", "d"]
                                                      for i in range(8)]},
                     "curves.json": {"epoch": [1, 2], "epoch_train_loss": [0.2, 0.1], "dev_loss": [0.3, None]},
                     "label_statistics.json": {"queries": 100, "list_length_mean": 20.0,
                                               "score_percentiles": {"50": 0.4}, "by_split_and_type": {"train/sentence": 90}}}}
    gate = {"promote": True, "reason": "passed (gold: judged queries)", "version": "4", "model_name": "kadet-embedding",
            "incumbent": "champion v3", "incumbent_metrics": {"ndcg@10": 0.65, "recall@100": 0.92},
            "links": {"MLflow run": "http://mlflow:5000/#/experiments/1/runs/abc", "model version": "models:/k/4"}}
    page = render(run, comparison, gate, cfg, images={})
    assert all(f'<h2 id="{s}">' in page for s in SECTIONS) and page.count("<h2 ") == len(SECTIONS)
    assert "<td>champion v3</td><td>0.6500</td><td>0.9200</td><td>-</td>" in page        # champion, base, candidate
    assert '<a href="http://mlflow:5000/#/experiments/1/runs/abc">' in page and "<code>models:/k/4</code>" in page
    assert "<script>" not in page and page.count("&lt;script&gt;") == 5                  # 5 samples per type, escaped
    assert "<td>label-merge</td><td>teacher_inconsistent</td><td>12</td>" in page and "low_top_score" not in page
    assert "[+0.0005, +0.0277]" in page and "promoted" in page and "<td>n/a</td>" in page
    assert "<td>candidate + BM25 (hybrid, RRF)</td><td>0.7141</td>" in page and "<td>BM25 alone</td><td>0.6863" in page
    assert 'id="use"' in page and "kadet export --out adapted --version 4" in page            # how to use it
    assert "models:/kadet-embedding/4" in page
    # the teacher section leads with what there was to learn: the pre-flight lead, and the share the dense gain kept
    assert "+0.0488 [+0.0334, +0.0653]; the candidate (dense) kept 28% of it." in page
    gate["tracking_uri"] = "sqlite:////srv/work/mlflow.db"
    assert "--version 4 --work-dir /srv/work:" in render(run, comparison, gate, cfg, images={})


def test_a_silver_page_leads_with_what_silver_cannot_say():
    from kadet.kit.comparison import SILVER_CAVEAT

    cfg = load_config(None, [])
    metrics = {"ndcg@10": 0.8, "recall@100": 0.95}
    comparison = Comparison.from_json({"kind": "silver", "queries": 120, "base": metrics, "candidate": metrics})
    gate = {"promote": False, "reason": "silver evaluation cannot promote: ...", "version": "2", "model_name": "k"}
    page = render({"pipeline_run": "r", "parent_run": "p", "stages": [], "files": {}}, comparison, gate, cfg, images={})
    assert "teacher lead: not measured" in page
    after_title = page[page.index("</h1>") + len("</h1>"):].lstrip()
    assert after_title.startswith('<p class=fail id="silver">')               # the first thing under the title
    assert "kadet judge" in after_title[:after_title.index("</p>")] and SILVER_CAVEAT.split(":")[0] in page
    comparison.kind = "gold"
    gold = render({"pipeline_run": "r", "parent_run": "p", "stages": [], "files": {}}, comparison, gate, cfg, images={})
    assert 'id="silver"' not in gold


def test_the_gain_and_its_interval_are_one_sentence_on_the_page_and_the_card():
    """The page and the model card state the gain with the same words (kadet.kit.comparison.gain_text);
    the run summary, which has only the bounds, says the same without what it lacks."""
    from kadet.stages.distill import card

    cfg = load_config(None, [])
    figures = {"ndcg@10": 0.6, "recall@100": 0.9}
    comparison = Comparison.from_json({"queries": 300, "base": figures, "candidate": figures, "delta": {"ndcg@10": GAIN}})
    sentence = ("nDCG@10 gain +0.0139; 90% paired bootstrap interval over 300 queries [+0.0005, +0.0277]; "
                "the candidate is ahead in 96% of resamples")
    assert gain_text(GAIN, "ndcg@10") == sentence
    page = render({"pipeline_run": "r", "parent_run": "p", "stages": [], "files": {}}, comparison,
                  {"promote": True, "reason": "passed"}, cfg, images={})
    assert f"<p>{sentence}.</p>" in page
    assert f"\n{sentence}.\n" in card.section_text({"evaluation": card.evaluation_facts(comparison, cfg.evaluation)})
    assert gain_text({"mean": 0.0139, "ci_low": 0.0005, "ci_high": 0.0277}) == \
        "gain +0.0139; paired bootstrap interval [+0.0005, +0.0277]"


def test_the_page_says_when_mining_searched_an_approximate_index():
    from kadet.kit.search import describe_index

    cfg = load_config(None, [])
    comparison = Comparison.from_json({"kind": "gold", "queries": 3, "base": {"ndcg@10": 0.5}, "candidate": {"ndcg@10": 0.6},
                                       "delta": {"ndcg@10": GAIN}})
    ivf = {"kind": "ivf", "documents": 1_000_000, "nlist": 1000, "nprobe": 188, "recall@100_vs_exact": 0.9931,
           "recall_queries": 64, "calibrated": {125: 0.98, 188: 0.9931}}
    mine = {"name": "mine", "seconds": 1.0, "status": "FINISHED", "metrics": {},
            "tags": {"kadet.dense_index": "dense: " + describe_index(ivf)}}
    gate = {"promote": False, "reason": "r", "model_name": "m"}
    page = render({"stages": [mine], "files": {}}, comparison, gate, cfg, images={})
    assert ("Mining's dense search: dense: an approximate faiss IVF index over 1,000,000 documents, 188 of 1000 "
            "clusters probed: recall@100 0.993 against exact search on 64 queries of this run.") in page
    mine["tags"]["kadet.dense_index"] = "dense: " + describe_index({"kind": "exact", "documents": 5183})
    assert "Mining's dense search" not in render({"stages": [mine], "files": {}}, comparison, gate, cfg, images={})
