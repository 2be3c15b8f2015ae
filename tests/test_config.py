"""The typed config: defaults, YAML, --set overrides and clear errors."""

from __future__ import annotations

import pytest

from kadet.config import KadetConfig, apply_overrides, dump_config, load_config
from kadet.errors import ConfigError


def test_defaults():
    cfg = load_config()
    assert cfg.retrieval.model == "all-MiniLM-L6-v2"
    assert cfg.retrieval.rrf_k == 60 and cfg.retrieval.top_k == 100
    assert cfg.evaluation.ndcg_k == 10 and cfg.data.split == "test"


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "k.yaml"
    p.write_text("retrieval:\n  top_k: 50\n  max_seq_length: 128\nseed: 7\n")
    cfg = load_config(p, ["retrieval.top_k=200", "retrieval.retriever=hybrid", "evaluation.ignore_identical_ids=false"])
    assert cfg.retrieval.top_k == 200 and cfg.retrieval.max_seq_length == 128
    assert cfg.retrieval.retriever == "hybrid" and cfg.seed == 7
    assert cfg.evaluation.ignore_identical_ids is False
    assert load_config(None, ["retrieval.max_seq_length=none"]).retrieval.max_seq_length is None


@pytest.mark.parametrize(
    "override, needle",
    [
        ("retrieval.topk=3", "unknown key 'retrieval.topk'"),
        ("retrieval.top_k=many", "'retrieval.top_k' = 'many' must be int"),
        ("retrieval.top_k=2.5", "must be an integer"),
        ("evaluation.ignore_identical_ids=maybe", "must be true or false"),
        ("retrieval=3", "'retrieval' must be a mapping"),
        ("nokey", "expected key=value"),
    ],
)
def test_bad_overrides(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(KadetConfig(), [override])


def test_bad_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("retrieval:\n  top_k: [1,\n")
    with pytest.raises(ConfigError, match=rf"{p}:\d+: invalid YAML"):
        load_config(p)
    p.write_text("retrieval:\n  colour: red\n")
    with pytest.raises(ConfigError, match=rf"{p}: unknown key 'retrieval.colour'"):
        load_config(p)


def test_hash_changes_with_settings_and_dump_round_trips(tmp_path):
    a, b = KadetConfig(), KadetConfig()
    assert a.hash() == b.hash()
    b.retrieval.top_k = 7
    assert a.hash() != b.hash()
    p = tmp_path / "dump.yaml"
    p.write_text(dump_config(b))
    assert load_config(p).hash() == b.hash()


def test_packaged_profiles_load_and_gpu_is_paper_scale(tmp_path):
    from pipelines.local import local_config_text

    from kadet.config import config_from_text, profile_text
    from kadet.errors import ConfigError

    gpu = config_from_text(local_config_text(profile="gpu"))
    assert gpu.distill.mode == "full" and gpu.distill.batch_size == 4096 and gpu.distill.lr == 2e-4
    assert gpu.generate.backend == "tgi" and gpu.generate.temperature == 0.8
    assert gpu.label.rerank_depth == 100 and gpu.prepare.sample_size == 100_000
    local = config_from_text(local_config_text(profile="local"))
    assert local.distill.mode == "query"
    own = tmp_path / "mine.yaml"
    own.write_text("distill: {epochs: 2}\n")
    assert config_from_text(local_config_text(profile=str(own))).distill.epochs == 2
    with pytest.raises(ConfigError, match="neither a packaged profile"):
        profile_text("nope")


def test_moved_keys_still_work_and_say_where_they_went(tmp_path, caplog):
    from kadet.config import CHOICES, load_config

    with caplog.at_level("WARNING"):
        cfg = load_config(None, ["generate.tgi_url=http://tgi:8080", "generate.min_words=3", "mine.rrf_k=30"])
    assert cfg.generate.tgi.url == "http://tgi:8080" and cfg.generate.clean.min_words == 3 and cfg.retrieval.rrf_k == 30
    assert "'generate.tgi_url' is now 'generate.tgi.url'" in caplog.text
    (tmp_path / "c.yaml").write_text("generate: {tgi: {api: text_generation, concurrency: 4}}\n")
    assert load_config(tmp_path / "c.yaml").generate.tgi.api == "text_generation"
    assert CHOICES["generate.tgi.api"] == ("chat", "text_generation")      # from the Literal type
    assert CHOICES["distill.mode"] == ("full", "query") and "mine.round_trip" in CHOICES
    # one home for each default: mine and distill follow retrieval.top_k / the labelled lists unless set
    cfg = load_config(None, ["retrieval.top_k=50"])
    assert cfg.mine.top_k == 0 and cfg.distill.list_size == 0
