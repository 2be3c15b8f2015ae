"""``kadet plan``: exact counts (checked against the stages' own outputs) and timed estimates."""

from __future__ import annotations

import math

from kadet.core.config import load_config, profile_config
from kadet.kit.data import read_records
from kadet.stages.generate import generate
from kadet.tools.plan import format_plan, make_plan
from kadet.stages.prepare import prepare
from tests.doubles.data import scifact_slice


def test_plan_counts_are_what_the_stages_produce_and_every_stage_is_timed(tmp_path):
    data = scifact_slice(tmp_path / "data")
    sets = [f"data.data_dir={data}", f"work_dir={tmp_path / 'work'}", "prepare.sample_size=40",
            "distill.batch_size=8", "label.rerank_depth=10"]
    cfg = load_config(None, sets, base=profile_config("local"))
    plan = make_plan(cfg)
    assert not (tmp_path / "work").exists()                      # planning leaves the work dir alone
    m = prepare(cfg, tmp_path / "prep")
    g = generate(cfg, tmp_path / "prep" / "passages.jsonl", tmp_path / "gen")
    queries = read_records(tmp_path / "gen" / "queries.jsonl", "qid", {"type": str})
    c = plan.counts
    assert c["passages"] == m.counts["passages"] == 40 and c["documents"] == m.counts["corpus"]
    assert plan.queries_by_type == {"sentence": len(queries)} and c["queries"] == g.counts["kept"]
    assert c["teacher_pairs"] == 10 * len(queries) and c["eval_kind"] == "gold" and c["eval_queries"] == 20
    assert c["training_steps"] == cfg.distill.epochs * math.ceil(c["train_queries_at_most"] / 8)
    assert [s.stage for s in plan.stages] == ["preflight", "prepare", "generate", "mine", "label", "distill",
                                              "evaluate", "tasks"]
    assert all(math.isfinite(s.seconds) and s.seconds >= 0 for s in plan.stages)
    seconds = {s.stage: s.seconds for s in plan.stages}
    assert seconds["mine"] > 0 and seconds["distill"] > 0 and plan.rates["task_start"] > 0
    # gold: the pre-flight step encodes the corpus (mine finds it cached) and scores 20 x 10 teacher pairs
    work = {s.stage: s.work for s in plan.stages}
    assert seconds["preflight"] > 0 and "200 teacher pairs" in work["preflight"] and work["mine"].startswith("encode 0 ")
    off = make_plan(load_config(None, [*sets, "distill.preflight=false"], base=profile_config("local")))
    assert {s.stage: s.seconds for s in off.stages}["preflight"] == 0
    text = format_plan(plan, "plan:")
    assert "40 passages" in text and "total" in text
    # the cluster profile: LLM query types, counted, not timed
    gpu = make_plan(load_config(None, sets[:2], base=profile_config("gpu")), measure_here=False)
    assert gpu.counts["llm_requests"] > 0 and not gpu.stages
