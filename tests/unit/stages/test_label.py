"""Label filters on constructed lists, sharding, resume, and the stage's output format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kadet.core.config import LabelConfig, load_config
from kadet.kit.data import Document
from kadet.core.errors import KadetError
from kadet.core.io import write_jsonl
from kadet.stages.label.stage import apply_filters, label, shard_file
from kadet.core.layout import shard_range
from kadet.core.manifest import Manifest


def _item(qid, src, docs, scores):
    return {"qid": qid, "source_doc_id": src, "doc_ids": docs, "scores": scores}


def test_consistency_filter():
    items = [_item("q1", "a", ["a", "b"], [2.0, 1.0]), _item("q2", "a", ["a", "b"], [1.0, 2.0])]
    m = Manifest(stage="label")
    out = apply_filters(items, LabelConfig(min_top_percentile=0, dev_fraction=0), 1, m)
    assert [o["qid"] for o in out] == ["q1"] and m.dropped == {"teacher_inconsistent": 1}
    out = apply_filters(items, LabelConfig(consistency=False, min_top_percentile=0, dev_fraction=0), 1, Manifest("x"))
    assert len(out) == 2


def test_percentile_cut_uses_all_scores():
    # all 12 scores sorted: 0 .2 .5 1 2 3 4 5 6 7 8 9; 25th percentile at rank 2.75: .5 + .75 x .5
    items = [_item("hi", "a", ["a", "b", "c", "d", "e"], [9.0, 8.0, 7.0, 6.0, 5.0]),
             _item("mid", "a", ["a", "b", "c", "d", "e"], [4.0, 3.0, 2.0, 1.0, 0.0]),
             _item("low", "a", ["a", "b"], [0.5, 0.2])]
    every = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0.5, 0.2]
    thr = np.percentile(every, 25)
    m = Manifest(stage="label")
    out = apply_filters(items, LabelConfig(min_top_percentile=25, dev_fraction=0), 1, m)
    assert thr == pytest.approx(0.875)
    assert [o["qid"] for o in out] == ["hi", "mid"] and m.dropped == {"low_top_score": 1}
    assert m.extra["top_score_threshold"] == pytest.approx(thr)


def test_normalisation_and_top_l():
    rng = np.random.default_rng(0)
    items = [_item(f"q{i}", "d0", [f"d{j}" for j in range(30)], sorted(rng.normal(size=30), reverse=True))
             for i in range(20)]
    lab = LabelConfig(min_top_percentile=0, list_size=20, dev_fraction=0)
    out = apply_filters(items, lab, 1, Manifest("x"))
    every = np.concatenate([it["scores"] for it in items])
    lo, hi = np.percentile(every, [1, 99])
    for it, o in zip(items, out):
        assert len(o["norm"]) == 20 and o["doc_ids"] == it["doc_ids"][:20]
        want = np.clip((np.array(it["scores"][:20]) - lo) / (hi - lo), 0, 1)
        assert o["norm"] == pytest.approx(want)
        assert o["norm"] == sorted(o["norm"], reverse=True)
    assert max(max(o["norm"]) for o in out) == 1.0  # clamped


def test_top_l_takes_teacher_order_not_input_order():
    items = [_item("q", "c", ["a", "b", "c", "d"], [0.1, 0.5, 0.9, 0.3])]
    out = apply_filters(items, LabelConfig(min_top_percentile=0, list_size=2, dev_fraction=0), 1, Manifest("x"))
    assert out[0]["doc_ids"] == ["c", "b"]


def test_split_is_seeded_and_90_10():
    items = [_item(f"q{i:03d}", f"p{i}", [f"p{i}", "b"], [1.0, 0.0]) for i in range(200)]
    lab = LabelConfig(min_top_percentile=0)
    a = apply_filters(items, lab, 42, Manifest("x"))
    b = apply_filters(list(reversed(items)), lab, 42, Manifest("x"))
    c = apply_filters(items, lab, 7, Manifest("x"))
    dev = {o["qid"] for o in a if o["split"] == "dev"}
    assert len(dev) == 20
    assert dev == {o["qid"] for o in b if o["split"] == "dev"}
    assert dev != {o["qid"] for o in c if o["split"] == "dev"}


def test_dev_takes_whole_source_passages():
    # 60 passages with 1..3 queries each (the LLM's types, or several sentences of one passage)
    items = [_item(f"q{i:03d}-{k}", f"p{i}", [f"p{i}", "b"], [1.0, 0.0]) for i in range(60) for k in range(1 + i % 3)]
    out = apply_filters(items, LabelConfig(min_top_percentile=0, dev_fraction=0.2), 5, Manifest("x"))
    dev = {o["source_doc_id"] for o in out if o["split"] == "dev"}
    train = {o["source_doc_id"] for o in out if o["split"] == "train"}
    assert dev and not dev & train                                    # no passage on both sides
    n_dev = sum(o["split"] == "dev" for o in out)
    assert round(0.2 * len(items)) <= n_dev < round(0.2 * len(items)) + 3   # whole passages: at most 2 over
    # one passage with every query: it cannot go to dev whole without leaving nothing to train on
    one = [_item(f"q{k}", "p0", ["p0", "b"], [1.0, 0.0]) for k in range(10)]
    assert {o["split"] for o in apply_filters(one, LabelConfig(min_top_percentile=0), 5, Manifest("x"))} == {"train"}


def test_shard_ranges_cover_everything():
    for n in (0, 1, 7, 100):
        got = [i for k in range(3) for i in shard_range(n, k, 3)]
        assert got == list(range(n))
    with pytest.raises(KadetError):
        shard_range(10, 3, 3)


class Overlap:
    """FAKE teacher for the sharding/resume tests: word overlap; can crash on call ``crash_on``."""

    name = "overlap"

    def __init__(self, corpus, crash_on=None):
        self.corpus, self.crash_on, self.calls, self.scored = corpus, crash_on, 0, []

    def score(self, queries, doc_lists):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt("injected crash")
        self.scored += queries
        return [np.array([len(set(q.split()) & set(self.corpus[d].text.split())) + 0.01 * (len(lst) - i)
                          for i, d in enumerate(lst)]) for q, lst in zip(queries, doc_lists)]


def _stage_inputs(tmp_path, n=12):
    corpus = {f"d{i}": Document(f"d{i}", f"topic{i} word{i} shared text") for i in range(25)}
    write_jsonl(tmp_path / "corpus.jsonl", (d.to_json() for d in corpus.values()))
    rows = [{"qid": f"g{i}", "query": f"topic{i} word{i}", "type": "question", "source_doc_id": f"d{i}",
             "candidates": [{"doc_id": f"d{(i + j) % 25}", "rrf": 1 / (61 + j)} for j in range(22)]}
            for i in range(n)]
    write_jsonl(tmp_path / "candidates.jsonl", rows)
    return corpus


def test_sharded_resumable_scoring_equals_single_run(tmp_path):
    corpus = _stage_inputs(tmp_path)
    base = ["label.flush_every=2", "label.min_top_percentile=0"]
    cand, corp = tmp_path / "candidates.jsonl", tmp_path / "corpus.jsonl"
    single = label(load_config(None, base), cand, corp, tmp_path / "single", teacher=Overlap(corpus))
    # two shards; shard 1 crashes after one flush, then resumes
    sharded = tmp_path / "sharded"
    label(load_config(None, base + ["label.num_shards=2", "label.shard_index=0"]), cand, corp, sharded,
          merge=False, teacher=Overlap(corpus))
    cfg1 = load_config(None, base + ["label.num_shards=2", "label.shard_index=1"])
    with pytest.raises(KeyboardInterrupt):
        label(cfg1, cand, corp, sharded, merge=False, teacher=Overlap(corpus, crash_on=2))
    assert len(shard_file(sharded, 1, 2).read_text().splitlines()) == 2
    with pytest.raises(KadetError, match="have no scores for their current candidate list yet"):
        label(cfg1, cand, corp, sharded, score=False)
    again = Overlap(corpus)
    m = label(cfg1, cand, corp, sharded, teacher=again)
    assert again.scored == [f"topic{i} word{i}" for i in range(8, 12)]  # only what was missing
    a = (tmp_path / "single" / "labels.jsonl").read_text()
    assert a == (sharded / "labels.jsonl").read_text()
    assert m.counts["labelled"] == single.counts["labelled"] == 12


def test_labels_format(tmp_path):
    corpus = _stage_inputs(tmp_path, n=20)
    cfg = load_config(None, ["label.min_top_percentile=0", "label.list_size=5"])
    m = label(cfg, tmp_path / "candidates.jsonl", tmp_path / "corpus.jsonl", tmp_path / "out", teacher=Overlap(corpus))
    rows = [json.loads(l) for l in (tmp_path / "out" / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and {r["split"] for r in rows} == {"train", "dev"}
    r = rows[0]
    assert set(r) == {"qid", "query", "type", "source_doc_id", "split", "passages"}
    assert len(r["passages"]) == 5 and r["passages"][0]["doc_id"] == r["source_doc_id"]
    assert set(r["passages"][0]) == {"doc_id", "text", "score"} and r["passages"][0]["text"] == corpus[r["source_doc_id"]].text
    assert all(0 <= p["score"] <= 1 for p in r["passages"])
    assert Manifest.read(tmp_path / "out").counts["train"] == m.counts["train"] == 18


def test_silver_holdout_takes_whole_source_passages_and_judges_with_the_teacher():
    # 100 passages, two queries each; scores: the source first, one close second, the rest low
    items = [_item(f"q{i:03d}-{k}", f"p{i}", [f"p{i}", f"x{i}", f"y{i}"], [3.0, 2.9, 0.0 + k * 0.01])
             for i in range(100) for k in range(2)]
    lab = LabelConfig(min_top_percentile=0, silver_queries=30, silver_min_score=0.9, norm_high_percentile=100,
                      norm_low_percentile=0)
    m = Manifest("x")
    out = apply_filters(items, lab, 3, m, silver=True)
    silver = [o for o in out if o["split"] == "silver"]
    assert 30 <= len(silver) <= 31 and m.counts["silver"] == len(silver)
    held_sources = {o["source_doc_id"] for o in silver}
    assert not any(o["source_doc_id"] in held_sources for o in out if o["split"] != "silver")   # no leak
    assert all(o["silver_qrels"] == {o["source_doc_id"]: 2, "x" + o["source_doc_id"][1:]: 1} for o in silver)
    assert all("silver_qrels" not in o for o in out if o["split"] != "silver")
    assert apply_filters(items, lab, 3, Manifest("x"), silver=True) == out                      # seeded
    # at most a fifth of the queries; and none without silver evaluation
    assert sum(o["split"] == "silver" for o in apply_filters(items[:20], lab, 3, Manifest("x"), silver=True)) <= 4
    plain = apply_filters(items, lab, 3, Manifest("x"))
    assert not any(o["split"] == "silver" for o in plain)


def test_teacher_scores_outlive_the_run_per_pair(tmp_path, monkeypatch):
    """The real ensemble (dense on a tiny model + BM25): a second run whose lists share most
    pairs with the first scores only the new pairs with the model member (BM25 depends on the
    corpus statistics, so it is never stored), and gives exactly the scores of a teacher
    without a store."""
    from kadet.stages.label.stage import pair_counts, stored_teacher
    from kadet.stages.label.teachers import build_teacher
    from tests.doubles.data import make_tiny_st

    corpus = {f"d{i}": Document(f"d{i}", f"topic{i} word{i} shared text number {i}") for i in range(30)}
    cfg = load_config(None, [f"retrieval.model={make_tiny_st(tmp_path)}", f"work_dir={tmp_path / 'work'}",
                             "label.ensemble={dense: 1.0, bm25: 0.5}"])
    queries = [f"topic{i} word{i}" for i in range(6)]
    first_lists = [[f"d{(i + j) % 20}" for j in range(10)] for i in range(6)]
    first = build_teacher("ensemble", cfg, corpus, wrap=stored_teacher(cfg, corpus, "corpus-1"))
    first.score(queries, first_lists)
    assert pair_counts(first) == {"pairs_reused": 0, "pairs_scored": 60}
    # the corpus grew: each list now holds 2 new passages (d20..d29) in place of 2 old ones
    second_lists = [lst[:8] + [f"d{20 + (i + k) % 10}" for k in range(2)] for i, lst in enumerate(first_lists)]
    second = build_teacher("ensemble", cfg, corpus, wrap=stored_teacher(cfg, corpus, "corpus-2"))
    got = second.score(queries, second_lists)
    assert pair_counts(second) == {"pairs_reused": 48, "pairs_scored": 12}
    fresh = build_teacher("ensemble", cfg, corpus).score(queries, second_lists)
    for a, b in zip(got, fresh):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a run that names its pairs up front (score_shard does) reads the store once, not per batch:
    # the store's segments are listed once (a spy on Store.segments), whatever the batches
    from kadet.core.reuse import Store

    listed = []
    original = Store.segments
    monkeypatch.setattr(Store, "segments", lambda self: listed.append(self.folder) or original(self))
    third = build_teacher("ensemble", cfg, corpus, wrap=stored_teacher(cfg, corpus, "corpus-2",
                                                                       pairs=list(zip(queries, second_lists))))
    batches = [third.score(queries[i:i + 2], second_lists[i:i + 2]) for i in range(0, 6, 2)]
    assert len(listed) == 1 and pair_counts(third) == {"pairs_reused": 60, "pairs_scored": 0}
    for a, b in zip([x for batch in batches for x in batch], fresh):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # a pair the run did not name is still looked up (one more read), and one scored now is known
    # to the later batches without scoring it again
    extra = ["topic5 word5 and more"]
    third.score(extra, [["d1", "d2"]])
    assert len(listed) == 2 and pair_counts(third) == {"pairs_reused": 60, "pairs_scored": 2}
    third.score(extra, [["d1", "d2"]])
    assert len(listed) == 2 and pair_counts(third) == {"pairs_reused": 62, "pairs_scored": 2}


def test_shards_in_their_own_folders_merge_into_the_single_run(tmp_path):
    """Each shard scores in its own folder (as KFP tasks do); merge_score_shards copies every
    shard's log with its ``.depends.json`` and writes the labels of one unsharded run. A shard
    scored for other teacher settings is refused, naming it."""
    from kadet.stages.label.stage import merge_score_shards

    corpus = _stage_inputs(tmp_path)
    base = ["label.flush_every=2", "label.min_top_percentile=0", "label.num_shards=2"]
    cand, corp = tmp_path / "candidates.jsonl", tmp_path / "corpus.jsonl"
    label(load_config(None, base[:2]), cand, corp, tmp_path / "single", teacher=Overlap(corpus))
    for i in range(2):
        label(load_config(None, base + [f"label.shard_index={i}"]), cand, corp, tmp_path / f"s{i}", merge=False,
              teacher=Overlap(corpus))
    shards = [tmp_path / "s0", tmp_path / "s1"]
    m = merge_score_shards(load_config(None, base), cand, corp, shards, tmp_path / "merged")
    assert (tmp_path / "merged" / "labels.jsonl").read_text() == (tmp_path / "single" / "labels.jsonl").read_text()
    assert m.counts["labelled"] == 12
    assert sorted(p.name for p in (tmp_path / "merged").glob("scores.*")) == [
        "scores.shard-0-of-2.jsonl", "scores.shard-0-of-2.jsonl.depends.json",
        "scores.shard-1-of-2.jsonl", "scores.shard-1-of-2.jsonl.depends.json"]
    other = load_config(None, base + ["label.shard_index=1", "label.max_passage_tokens=64"])
    label(other, cand, corp, tmp_path / "s1", merge=False, teacher=Overlap(corpus))
    with pytest.raises(KadetError, match=r"scores\.shard-1-of-2\.jsonl was scored for other teacher settings.*shard 1"):
        merge_score_shards(load_config(None, base), cand, corp, shards, tmp_path / "refused")
