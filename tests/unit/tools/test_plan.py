"""``kadet plan``: exact counts (checked against the stages' own outputs) and timed estimates."""

from __future__ import annotations

import math

import pytest

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


def _costs(us: float = 10.0) -> dict:
    stages = {s: {"us_per_passage": us, "fixed_gib": 0.5, "gib_per_passage": 1e-6}
              for s in ("fingerprint", "prepare", "generate", "mine", "label", "evaluate", "rerun x2")}
    return {"machine": "m 2 cpu", "date": "2026-12-07T00:00:00", "commit": "abc", "queries": 5000, "tiny_dim": 32,
            "real_dim": 384, "stages": stages}


def test_scale_rows_follow_the_measured_costs_and_the_profiles_query_counts():
    from kadet.tools.plan import format_scale, pods_for, scale_rows

    rates = {"encode_document": 0.01, "encode_query": 0.001, "teacher_pair": 0.002, "distill_step": 1.0,
             "distill_batch": 64, "llm_request": 0.0}
    local, gpu = profile_config("local"), profile_config("gpu")
    rows = scale_rows("local", local, _costs(), rates, (100_000, 1_000_000))
    by = {(r.passages, r.stage): r for r in rows}
    assert [r.stage for r in rows[:8]] == ["fingerprint", "prepare", "generate", "encode corpus", "mine", "label",
                                           "distill", "evaluate"]
    # per-passage stages grow with the corpus, linearly; memory by the measured growth (+ real embeddings)
    assert by[1_000_000, "prepare"].seconds == pytest.approx(10 * by[100_000, "prepare"].seconds)
    assert by[1_000_000, "prepare"].gib == pytest.approx(0.5 + 1.0)
    assert by[1_000_000, "encode corpus"].seconds == pytest.approx(10_000)
    assert by[1_000_000, "mine"].gib == pytest.approx(0.5 + 1.0 + 2 * 1e6 * 352 * 4 / 2**30)
    # the local profile samples 5,000 passages, one sentence query each: label is capped, not the corpus
    q = 5000 * local.label.rerank_depth
    assert by[1_000_000, "label"].seconds == pytest.approx(10.0 * 1e-6 * 1e6 + q * 0.002)
    assert by[100_000, "generate"].seconds == 0 and by[100_000, "generate"].basis == "sentence queries"
    g = {(r.passages, r.stage): r for r in scale_rows("gpu", gpu, _costs(), rates, (1_000_000,))}
    assert "LLM requests; rate not measured here" in g[1_000_000, "generate"].basis
    assert g[1_000_000, "label"].seconds > by[1_000_000, "label"].seconds          # 100k passages x 6 types
    assert "re-encoded" in g[1_000_000, "evaluate"].basis                          # full tuning re-encodes
    assert "595,000 more queries than measured: not included" in g[1_000_000, "mine"].basis
    assert g[1_000_000, "distill"].seconds == pytest.approx(                       # a step of 4,096 = 64 x 64
        math.ceil(600_000 * 0.9 / 4096) * gpu.distill.epochs * 64.0)
    sel = [r for r in rows if r.passages == 1_000_000]
    sharded = sum(r.seconds for r in sel if r.stage in ("generate", "label", "encode corpus"))
    serial = sum(r.seconds for r in sel) - sharded
    p = pods_for(sel, 3.0)
    assert p["pods"] == max(1, math.ceil(sharded / (3 * 3600 - serial)))
    assert pods_for(sel, serial / 3600 * 0.9)["pods"] is None                     # the unsharded part alone is over
    text = format_scale(rows, _costs(), "here", 3.0)
    assert "local, 1,000,000 passages" in text and "m 2 cpu" in text and "under 3 h" in text
    assert "distill" in text and "     - GiB" in text and " 1 pods " not in text
    # with a measured exact-search rate, the queries beyond the benchmark's are searched at it (scaled to 384 dims)
    costs = {**_costs(), "search": {"exact_s_per_query_passage": 1e-8, "dim": 192, "source": "bench x: 1M"}}
    s = {(r.passages, r.stage): r for r in scale_rows("gpu", gpu, costs, rates, (1_000_000,))}
    extra = 595_000 * 1_000_000 * 2e-8
    assert s[1_000_000, "mine"].seconds == pytest.approx(g[1_000_000, "mine"].seconds + extra)
    assert "exact search of 595,000 more queries than measured at 20.0 ns" in s[1_000_000, "mine"].basis


def test_the_packaged_scale_costs_cover_every_stage():
    from kadet.tools.plan import load_scale_costs

    costs = load_scale_costs()
    assert {"fingerprint", "prepare", "generate", "mine", "label", "evaluate"} <= set(costs["stages"])
    assert costs["machine"] and costs["commit"] and costs["queries"] > 0
    assert all(c["us_per_passage"] > 0 and c["gib_per_passage"] >= 0 for c in costs["stages"].values())
