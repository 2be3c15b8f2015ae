"""Passage selection: cleaning, near-duplicates, test-positive exclusion, seeded sampling."""

from __future__ import annotations

import json

from kadet.core.config import PrepareConfig, load_config
from kadet.kit.data import Document, load_beir
from kadet.core.manifest import Manifest
from kadet.kit.data import normalise
from kadet.stages.prepare import prepare, select_passages


def test_normalise():
    assert normalise("  Héllo,\tWORLD!  ") == "héllo world"
    assert normalise("ﬁne") == "fine"  # NFKC


def test_select_drops_each_kind():
    corpus = {
        "short": Document("short", "tiny"),
        "a": Document("a", "Aspirin reduces the risk of heart attack."),
        "a_copy": Document("a_copy", "ASPIRIN reduces the risk of heart attack!"),
        "prefix": Document("prefix", "Coffee is associated with lower liver disease"),
        "longer": Document("longer", "Coffee is associated with lower liver disease in adults."),
        "test_pos": Document("test_pos", "Vitamin D deficiency is linked to bone fractures."),
        "keep": Document("keep", "Short sleep raises the risk of obesity in children."),
    }
    m = Manifest(stage="prepare")
    out = select_passages(corpus, {"test_pos"}, PrepareConfig(sample_size=0), manifest=m)
    assert [d.doc_id for d in out] == ["a", "longer", "keep"]
    assert m.dropped == {"too_short": 1, "exact_duplicate": 1, "near_duplicate": 1, "eval_relevant": 1}


def test_sampling_is_seeded():
    corpus = {f"d{i}": Document(f"d{i}", f"passage number {i} with enough text") for i in range(100)}
    a = select_passages(corpus, set(), PrepareConfig(sample_size=10), seed=1)
    b = select_passages(corpus, set(), PrepareConfig(sample_size=10), seed=1)
    c = select_passages(corpus, set(), PrepareConfig(sample_size=10), seed=2)
    assert a == b and a != c and len(a) == 10


def test_prepare_stage_never_keeps_test_positives(scifact, tmp_path):
    cfg = load_config(None, [f"data.data_dir={scifact}", "prepare.sample_size=0"])
    m = prepare(cfg, tmp_path)
    kept = {json.loads(l)["_id"] for l in (tmp_path / "passages.jsonl").read_text().splitlines()}
    positives = {d for rels in load_beir(scifact, "test").qrels.values() for d, s in rels.items() if s > 0}
    clean = {json.loads(l)["_id"] for l in (tmp_path / "corpus.jsonl").read_text().splitlines()}
    assert len(positives) == 283 and not kept & positives and not clean & positives
    assert m.dropped["eval_relevant"] == 283 and m.counts["passages"] == len(kept) == 5183 - sum(m.dropped.values())
    assert Manifest.read(tmp_path).inputs["exclude_qrels_0"]["fingerprint"].startswith("sha256:")


def test_a_grown_corpus_keeps_the_earlier_sample():
    """Was a seeded ``random.sample`` of positions: one more document reshuffled the whole sample,
    so a run over a grown corpus generated for every passage again. Now the ``n`` passages whose
    seeded id digest is smallest: every passage sampled before that still ranks is sampled again."""
    from kadet.core.manifest import Manifest
    from kadet.stages.prepare import sample_passages

    docs = [Document(f"d{i}", f"passage {i} text") for i in range(1000)]
    old = {d.doc_id for d in sample_passages(docs[:800], 200, 42, Manifest(stage="prepare"))}
    new = {d.doc_id for d in sample_passages(docs, 200, 42, Manifest(stage="prepare"))}
    assert len(old) == len(new) == 200
    newcomers = new - old
    assert newcomers <= {f"d{i}" for i in range(800, 1000)}       # only new documents enter
    assert 20 <= len(newcomers) <= 60                              # ~ a fifth of the sample, as the corpus grew
    assert sample_passages(docs, 200, 7, Manifest(stage="prepare")) != sample_passages(docs, 200, 42, Manifest(stage="prepare"))


def test_qrels_without_queries_or_queries_without_qrels_stop_prepare(tiny_beir, tmp_path):
    """Was: a folder with ``qrels/test.tsv`` but no ``queries.jsonl`` ran as silver, and the judged
    passages went into training; ``queries.jsonl`` with no qrels for the split ran silver too. Now
    one line naming both files; a corpus alone stays silver, the whole folder gold."""
    import pytest

    from kadet.core.errors import DataError
    from kadet.kit.data import eval_kind

    cfg = load_config(None, [f"data.data_dir={tiny_beir}", "prepare.sample_size=0"])
    assert prepare(cfg, tmp_path / "gold").extra["eval_kind"] == "gold"
    queries = tiny_beir / "queries.jsonl"
    queries.rename(tmp_path / "queries.jsonl")
    with pytest.raises(DataError) as err:
        prepare(cfg, tmp_path / "no-queries")
    assert "qrels/test.tsv" in str(err.value) and str(queries) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "no-queries" / "passages.jsonl").exists()
    (tmp_path / "queries.jsonl").rename(queries)
    (tiny_beir / "qrels" / "test.tsv").rename(tiny_beir / "qrels" / "dev.tsv")
    with pytest.raises(DataError, match=r"queries\.jsonl.*qrels/test\.tsv is missing; set data\.split to one of dev"):
        eval_kind(tiny_beir, "test", None)
    assert eval_kind(tiny_beir, "dev", None) == "gold"
    (tiny_beir / "qrels" / "dev.tsv").unlink()
    queries.unlink()
    assert prepare(cfg, tmp_path / "silver").extra["eval_kind"] == "silver"   # a corpus alone
