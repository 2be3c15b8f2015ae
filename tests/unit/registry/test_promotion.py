"""The registry path a person drives and the one that must not wedge, against a real ``mlflow
server`` on 127.0.0.1 (tiny random models: plumbing only): MLflow failing once at each registry
step (a fault-injection FAKE client, tests/doubles/mlflowfaults.py) and what the next run does;
``kadet judge``'s export, then ``kadet gate`` on it; ``kadet promote`` by hand."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from kadet.core.config import load_config
from kadet.core.manifest import Manifest
from kadet.kubeflow.steps import challenger_step, fingerprint_step, promote_step, register_step
from kadet.registry import tracking
from kadet.registry.register import FAILURE_TAG, PENDING_INPUTS_TAG, alias_version
from kadet.stages.fingerprint import INPUTS_TAG
from tests.doubles.data import make_tiny_st
from tests.doubles.mlflowfaults import Injector, install
from tests.doubles.mlflowserver import mlflow_server

NDCG, RECALL = "ndcg@10", "recall@100"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return [make_tiny_st(tmp_path_factory.mktemp(f"m{i}"), seed=i) for i in range(3)]


def config(server, tmp_path, name, data, *extra):
    return load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path / 'work'}",
                              f"register.model_name={name}", "register.promote_settle_s=0", "register.confidence=0",
                              f"data.data_dir={data}", *extra])


def prepared(cfg, folder: Path) -> Path:
    """What the prepare step leaves for the register step: the corpus's fingerprints (and its
    document list in the work dir's store, for the lineage and ``kadet promote``'s corpus check)."""
    from kadet.kit.data import corpus_file, read_corpus
    from kadet.stages.fingerprint import document_digests, keep_digests
    from kadet.stages.prepare import fingerprints

    fp = fingerprints(cfg)
    docs = read_corpus(corpus_file(cfg.data.data_dir))
    keep_digests(cfg.work_dir, fp["corpus"], document_digests(docs, cfg.data.title_separator))
    Manifest(stage="prepare", counts={"corpus": len(docs)},
             extra={"fingerprint": {"corpus": fp["corpus"], "inputs": fp["inputs"]}}).write(folder)
    return folder


def evaluated(folder: Path, kind: str, ndcg: float = 0.7) -> Path:
    """The evaluate step's ``comparison.json``: gold passes the gate (no champion: against the
    base model's 0.5), silver is refused (silver never promotes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "comparison.json").write_text(json.dumps({
        "eval_data": f"sha256:{kind}", "kind": kind, "candidate": {NDCG: ndcg, RECALL: 0.9},
        "base": {NDCG: 0.5, RECALL: 0.9}, "models": {"base": "all-MiniLM-L6-v2"}}))
    return folder


def run_once(cfg, model, ev, prep, key, injector=None, fail_at=("", "")):
    """One pipeline run of the registry path, task by task as the DAG runs them; ``fail_at``
    = (step, MLflow client method) arms the injector just before that step."""
    def arm(step):
        if injector is not None and fail_at[0] == step:
            injector.arm(fail_at[1])

    arm("fingerprint")
    fp = fingerprint_step(cfg, key)
    if fp["unchanged_since"]:
        return "unchanged", fp["unchanged_since"]
    arm("register")
    out = register_step(cfg, str(model), str(ev), key, prepared_dir=str(prep))
    if out["promote"]:
        arm("promote")
        promote_step(cfg, out["version"], key)
    else:
        arm("challenger")
        challenger_step(cfg, out["version"], out["reason"], key)
    return "registered", out["version"]


FAULTS = [("fingerprint", "search_model_versions", "gold"), ("register", "get_model_version_by_alias", "gold"),
          ("register", "set_model_version_tag", "gold"), ("promote", "get_model_version", "gold"),
          ("promote", "set_model_version_tag", "gold"),          # the alias is set, its tags are not
          ("challenger", "set_registered_model_alias", "silver"), ("challenger", "set_model_version_tag", "silver")]


@pytest.mark.parametrize("step,method,kind", FAULTS, ids=[f"{s}-{m}" for s, m, _ in FAULTS])
def test_mlflow_failing_once_at_any_registry_step_never_wedges_the_next_run(
        server, models, tmp_path, tiny_beir, monkeypatch, step, method, kind):
    """Was: the register step wrote ``kadet.inputs_fingerprint`` before the alias step; when that
    failed, every later run said "no change since vN" and vN was neither champion nor challenger.
    Now the failed run leaves no inputs fingerprint; the next run reuses the version and finishes
    its registration; the run after it has nothing new, and says so for a version with its alias."""
    name = f"fault-{step}-{method}".replace("_", "-")
    cfg = config(server, tmp_path, name, tiny_beir)
    ev, prep = evaluated(tmp_path / "ev", kind), prepared(cfg, tmp_path / "prep")
    injector = Injector()
    install(monkeypatch, injector)
    with pytest.raises(Exception, match="injected fault"):
        run_once(cfg, models[0], ev, prep, f"{name}-1", injector, (step, method))
    assert injector.fired == [method]
    c = tracking.client(cfg)
    versions = c.search_model_versions(f"name = '{name}'")
    assert all(INPUTS_TAG not in v.tags for v in versions)              # nothing says "no change" yet

    assert run_once(cfg, models[0], ev, prep, f"{name}-2") == ("registered", "1")   # not "unchanged"
    assert len(c.search_model_versions(f"name = '{name}'")) == 1          # the same version, reused
    alias = "champion" if kind == "gold" else "challenger"
    assert str(alias_version(c, name, alias).version) == "1"
    mv = c.get_model_version(name, "1")
    assert mv.tags[INPUTS_TAG] == mv.tags[PENDING_INPUTS_TAG] and mv.tags["kadet.corpus_fingerprint"]
    assert mv.tags["kadet.gate"] == ("passed" if kind == "gold" else "failed")

    assert run_once(cfg, models[0], ev, prep, f"{name}-3") == ("unchanged", "1")


def test_a_promotion_refused_at_the_last_moment_fails_its_task(server, models, tmp_path, tiny_beir):
    """Was: the promote task stayed green when the compare-and-set refused. Now the refusal is
    recorded (challenger, the parent run's kadet.gate) and the task fails saying why."""
    from kadet.core.errors import KadetError
    from kadet.registry.promotion import promote

    name = "late-refusal"
    cfg = config(server, tmp_path, name, tiny_beir)
    ev = evaluated(tmp_path / "ev", "gold", 0.70)
    first = register_step(cfg, str(models[0]), str(ev), "late-1")
    second = register_step(cfg, str(models[1]), str(evaluated(tmp_path / "ev2", "gold", 0.60)), "late-2")
    assert first["promote"] and second["promote"]                        # both decided against the base model
    assert promote(cfg, first["version"]).promote
    with pytest.raises(KadetError, match="refused at the last moment.*below champion v1's 0.7000"):
        promote_step(cfg, second["version"], "late-2")
    c = tracking.client(cfg)
    assert str(alias_version(c, name, "challenger").version) == second["version"]
    parent = c.get_run(tracking.parent_run_id(cfg, "late-2"))
    assert "below champion v1" in parent.data.tags["kadet.gate"]
