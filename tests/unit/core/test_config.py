"""The typed config: defaults, YAML, --set overrides and clear errors."""

from __future__ import annotations

import pytest

from kadet.core.config import KadetConfig, apply_overrides, dump_config, load_config
from kadet.core.errors import ConfigError


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
    from kadet.kubeflow.local import local_config_text

    from kadet.core.config import config_from_text, profile_text
    from kadet.core.errors import ConfigError

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
    from kadet.core.config import CHOICES, load_config

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


# --- each setting carries its rules; one load path; component names checked at load ---


def test_every_setting_is_one_declaration_with_its_help_and_rules():
    """Help, ranges and component names come from each field's ``setting(...)`` metadata: no
    second table to keep in step, no help scraped from comments."""
    import dataclasses

    from kadet.core.config import RANGES, _fields, _walk, field_docs

    leaves = [key for key, _ in _walk(KadetConfig())]
    assert leaves and all(field_docs().get(key) for key in leaves)            # every setting says what it is
    declared = {key: f.metadata for key, f, _ in _fields(KadetConfig())}
    assert RANGES == {key: meta["range"] for key, meta in declared.items() if "range" in meta}
    assert RANGES["distill.lr"] == (0, None, False) and RANGES["label.list_size"] == (2, None, True)
    assert RANGES["register.confidence"] == (0, 1, False)
    assert declared["label.teacher"]["names"][-1] == "ensemble" and "names" in declared["mine.retrievers"]
    # a new setting is one declaration: validate and the help read it from there
    from kadet.core.config import setting, validate

    @dataclasses.dataclass
    class Extra:
        depth: int = setting(3, "How deep.", low=1)
        under: int = setting(0, "Below depth.", below="depth")

    assert validate(Extra()).depth == 3
    with pytest.raises(ConfigError, match="'depth' = 0 must be >= 1"):
        validate(Extra(depth=0))
    with pytest.raises(ConfigError, match="'under' = 3 must be < depth"):
        validate(Extra(under=3))


@pytest.mark.parametrize("override, allowed", [
    ("label.teacher=ensmble", "dense, dense:PATH, bm25, ql, ql:MODEL, cross-encoder:PATH, monot5:PATH, rankt5:PATH, "
                              "ensemble"),
    ("label.teacher=cross-encoder", "cross-encoder:PATH"),
    ("label.teacher=bm25:x", "dense, dense:PATH, bm25"),
    ("label.ensemble={dense: 1, dnse: 1}", "unknown name(s) ['dnse']"),
    ("label.ensemble={ensemble: 1}", "unknown name(s) ['ensemble']"),            # an ensemble of itself never ends
    ("mine.retrievers=dense,bm52", "each must be one of dense, dense:MODEL, bm25"),
    ("mine.retrievers=", "and at least one"),
    ("retrieval.retriever=dnse", "must be one of dense, bm25, hybrid"),
    ("evaluation.retriever=bm25", "must be one of dense, hybrid"),
    ("generate.backend=tgx", "must be one of local, tgi"),
    ("distill.init=champ", "must be one of base, champion"),
    ("distill.mode=half", "must be one of full, query"),
    ("distill.loss=kl", "must be one of listwise, infonce"),
])
def test_a_setting_naming_a_component_is_checked_at_load(override, allowed):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert f"'{key}'" in str(exc.value) and allowed in str(exc.value) and "\n" not in str(exc.value)


def test_component_names_with_an_argument_load():
    cfg = load_config(None, ["label.teacher=cross-encoder:/models/bge-reranker", "mine.retrievers=dense,dense:/m,bm25",
                             "label.ensemble={dense: 1, ql:/models/llm: 0.5, monot5:/m: 1}"])
    assert cfg.label.teacher == "cross-encoder:/models/bge-reranker" and cfg.mine.retrievers[1] == "dense:/m"
    for spec in ("dense", "dense:/m", "ql", "ql:smollm2", "monot5:/m", "rankt5:/m", "ensemble"):
        assert load_config(None, [f"label.teacher={spec}"]).label.teacher == spec


def test_the_builders_use_the_same_name_lists():
    """kadet/stages/label/teachers.py and kadet/stages/mine.py name what they build from kadet/core/config.py's lists."""
    from kadet.core.config import MINE_RETRIEVERS, TEACHERS
    from tests.conftest import REPO

    table = (REPO / "kadet" / "stages" / "label" / "teachers.py").read_text(encoding="utf-8").split('"""')[1]
    assert all(f"``{name}``" in table for name in TEACHERS)                    # the module's table lists each
    assert "TEACHERS" in (REPO / "kadet" / "stages" / "label" / "teachers.py").read_text() and \
        "MINE_RETRIEVERS" in (REPO / "kadet" / "stages" / "mine.py").read_text()
    assert MINE_RETRIEVERS == ("dense", "dense:MODEL", "bm25")


@pytest.mark.parametrize("override, needle", [
    ("generate.shard_index=2", "'generate.shard_index' = 2 must be < generate.num_shards (1)"),
    ("label.norm_low_percentile=99.5", "'label.norm_low_percentile' = 99.5 must be < label.norm_high_percentile"),
    ("distill.list_size=1", "'distill.list_size' = 1: a list needs 2 passages or more (0 = as labelled)"),
    ("generate.types={poem: 1}", "'generate.types': unknown query type(s) ['poem']"),
    ("generate.types={question: 0}", "weights must be >= 0, at least one > 0"),
    ("generate.top_p=1.5", "'generate.top_p' = 1.5 must be >= 0 and <= 1"),
    ("distill.nce_temp=0", "'distill.nce_temp' = 0.0 must be > 0"),
    ("generate.num_shards=0", "'generate.num_shards' = 0 must be >= 1"),     # its own range before the shard rule
])
def test_each_rule_still_holds(override, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert needle in str(exc.value)


def test_one_load_path_for_files_and_text(tmp_path):
    """``load_config`` is ``config_from_text`` of the file: same config, same errors (a YAML
    syntax error names the line either way)."""
    from kadet.core.config import config_from_text

    p = tmp_path / "k.yaml"
    p.write_text("retrieval:\n  top_k: 50\nlabel: {teacher: bm25}\n")
    assert load_config(p, ["seed=3"]).to_dict() == config_from_text(p.read_text(), ["seed=3"], str(p)).to_dict()
    for text in ("retrieval:\n  top_k: [1,\n", "label: {teacher: bm52}\n", "- a list\n", "retrieval: {colour: red}\n"):
        p.write_text(text)
        with pytest.raises(ConfigError) as from_file:
            load_config(p)
        with pytest.raises(ConfigError) as from_text:
            config_from_text(text, source=str(p))
        assert str(from_file.value) == str(from_text.value) and str(p) in str(from_file.value)
    with pytest.raises(ConfigError, match=r"pipeline config:\d+: invalid YAML"):
        config_from_text("retrieval:\n  top_k: [1,\n", source="pipeline config")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_loading_a_config_imports_no_model_library():
    import subprocess
    import sys

    code = ("import sys, kadet.core.config as c; c.load_config(None, ['label.teacher=ensemble']); "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_setting_the_docs_name_exists():
    """Each ``section.key`` the README and docs/*.md name in backticks is a setting (or a
    section) of kadet/core/config.py, so a renamed or removed setting cannot linger in the docs."""
    import re

    from kadet.core.config import _fields
    from tests.conftest import REPO

    known = {key for key, _, _ in _fields(KadetConfig())}
    sections = "|".join(f.name for f in __import__("dataclasses").fields(KadetConfig))
    pattern = re.compile(rf"(?<![\w/.-])((?:{sections})\.[a-z_0-9]+(?:\.[a-z_0-9]+)*)(?![\w/(-])")
    named: dict[str, set[str]] = {}
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for span in re.findall(r"`([^`\n]+)`", doc.read_text(encoding="utf-8")):
            for key in pattern.findall(span):
                named.setdefault(key.rstrip("."), set()).add(doc.name)
    assert len(named) >= 20                                      # the docs do name settings
    unknown = {key: docs for key, docs in named.items() if key not in known}
    assert not unknown, unknown


def test_the_teachers_docs_stages_lists_are_teachers():
    import re

    from kadet.core.config import TEACHERS, names_component
    from tests.conftest import REPO

    text = (REPO / "docs" / "stages.md").read_text(encoding="utf-8")
    listed = re.findall(r"`([^`]+)`", text.split("Teachers (`label.teacher`):", 1)[1].split("label.ensemble", 1)[0])
    assert len(listed) >= 6 and all(names_component(name, TEACHERS) for name in listed), listed


def test_register_confidence_is_only_a_level_and_the_old_zero_still_turns_the_test_off(tmp_path, caplog):
    """``register.confidence: 0`` used to mean three things (gate test off; a 95% interval in
    comparison.json; kadet judge at 90%): now the switch is ``register.require_significant_gain``
    and ``register.confidence`` is only the level; an old 0 still turns the test off, with a warning."""
    new = load_config(None, ["register.require_significant_gain=false"]).register
    assert new.require_significant_gain is False and new.confidence == 0.9
    assert load_config(None, []).register.require_significant_gain is True
    old = tmp_path / "old.yaml"
    old.write_text("register:\n  confidence: 0\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        cfg = load_config(old).register
    assert cfg.require_significant_gain is False and cfg.confidence == 0.9
    assert "register.require_significant_gain' = false" in caplog.text and "0.95" in caplog.text
    old.write_text("register:\n  confidence: 0\n  require_significant_gain: true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="contradicts"):
        load_config(old)
    with pytest.raises(ConfigError, match="must be > 0"):
        validate_level = KadetConfig()
        validate_level.register.confidence = 0
        from kadet.core.config import validate
        validate(validate_level)


def test_a_config_that_is_not_utf8_is_one_line_naming_file_line_column(tmp_path):
    """Was a ``UnicodeDecodeError`` traceback. Every text file kadet reads goes through
    ``kadet.core.io.read_text``: the config, a profile file, a manifest."""
    from kadet.core.config import profile_config
    from kadet.core.errors import KadetError
    from kadet.core.manifest import Manifest

    p = tmp_path / "latin.yaml"
    p.write_bytes("seed: 7\nrun_name: caf\xe9\n".encode("latin-1"))
    needle = rf"{p}:2: invalid UTF-8 byte 0xe9 at column 14 \(not UTF-8 text"
    with pytest.raises(KadetError, match=needle) as err:
        load_config(p)
    assert "\n" not in str(err.value)
    with pytest.raises(KadetError, match=needle):
        profile_config(str(p))
    (tmp_path / "manifest.json").write_bytes(b'{"stage": "caf\xe9"}')
    with pytest.raises(KadetError, match=r"manifest\.json:1: invalid UTF-8 byte 0xe9 at column 15"):
        Manifest.read(tmp_path)
