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
from tests.doubles.mlflowfaults import Injector, install

NDCG, RECALL = "ndcg@10", "recall@100"




def config(server, tmp_path, name, data, *extra):
    return load_config(None, [f"tracking.tracking_uri={server}", f"work_dir={tmp_path / 'work'}",
                              f"register.model_name={name}", "register.promote_settle_s=0", "register.require_significant_gain=false",
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


def run_once(cfg, model, ev, prep, key, injector=None, fail_at=("", ""), fingerprint=True):
    """One pipeline run of the registry path, task by task as the DAG runs them; ``fail_at``
    = (step, MLflow client method) arms the injector just before that step. ``fingerprint=False``:
    another model on the same corpus (as if a setting had changed)."""
    def arm(step):
        if injector is not None and fail_at[0] == step:
            injector.arm(fail_at[1])

    arm("fingerprint")
    fp = fingerprint_step(cfg, key) if fingerprint else {"unchanged_since": ""}
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


def cli(argv, capsys):
    from kadet.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_kadet_promote_by_hand_records_the_decision(server, models, tmp_path, tiny_beir, monkeypatch, capsys):
    """A person promotes the silver challenger: the alias moves (compare-and-set), the version
    records who, when, why and the figures it had, the challenger alias and the failed-gate tag
    go; a version trained on other documents is refused unless --force; credentials in the
    environment (passed through by mlflow itself) are never printed."""
    from tests.doubles.data import write_beir

    name = "by-hand"
    cfg = config(server, tmp_path, name, tiny_beir)
    run_once(cfg, models[0], evaluated(tmp_path / "gold", "gold"), prepared(cfg, tmp_path / "prep"), "hand-1")
    run_once(cfg, models[1], evaluated(tmp_path / "silver", "silver", 0.8), tmp_path / "prep", "hand-2",
             fingerprint=False)
    c = tracking.client(cfg)
    assert FAILURE_TAG in c.get_model_version(name, "2").tags
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-never-printed")
    common = ["--set", f"tracking.tracking_uri={server}", "--work-dir", str(cfg.work_dir), "--model-name", name,
              "--set", "register.promote_settle_s=0"]
    code, out, err = cli(["promote", "--version", "challenger", "--reason", "better on our support queries",
                          "--data", str(tiny_beir), *common], capsys)
    assert code == 0, err
    assert "pw-never-printed" not in out + err
    assert f"kadet promote: {name} v2 is now the champion (was v1)" in out and "by alice at " in out
    mv = c.get_model_version(name, "2")
    assert str(alias_version(c, name, "champion").version) == "2" and alias_version(c, name, "challenger") is None
    assert mv.tags["kadet.manual.by"] == "alice" and mv.tags["kadet.manual.reason"] == "better on our support queries"
    assert mv.tags["kadet.manual.replaced"] == "1" and mv.tags["kadet.gate"] == "promoted by hand"
    assert FAILURE_TAG not in mv.tags and mv.tags[INPUTS_TAG]
    facts = json.loads(mv.tags["kadet.manual.figures"])
    assert facts["version"]["metrics"] == {NDCG: 0.8, RECALL: 0.9} and facts["version"]["eval_kind"] == "silver"
    assert facts["version"]["gate_failure"].startswith("silver evaluation cannot promote")
    assert facts["champion_before"]["version"] == "1"
    assert mv.tags["kadet.manual.corpus"].startswith("v2 was trained on the documents of the corpus in")

    # v3 was trained on another corpus: refused unless --force
    other = write_beir(tmp_path / "other", [{"_id": "x1", "text": "an unrelated document"}], [], [])
    ocfg = config(server, tmp_path, name, other)
    run_once(ocfg, models[2], evaluated(tmp_path / "silver3", "silver"), prepared(ocfg, tmp_path / "prep3"), "hand-3")
    code, out, err = cli(["promote", "--version", "3", "--reason", "try", "--data", str(tiny_beir), *common], capsys)
    assert code == 2 and "v3 was trained on other documents than the corpus in" in err and "--force" in err
    assert str(alias_version(c, name, "champion").version) == "2"
    code, out, err = cli(["promote", "--version", "3", "--to", "challenger", "--reason", "keep an eye on it",
                          "--data", str(tiny_beir), "--force", "--by", "bob", *common], capsys)
    assert code == 0 and str(alias_version(c, name, "challenger").version) == "3"
    assert c.get_model_version(name, "3").tags["kadet.manual.corpus"].startswith("forced: v3 was trained on other")
    code, out, err = cli(["promote", "--version", "champion", "--to", "challenger", "--reason", "x", *common], capsys)
    assert code == 2 and "leaves no champion" in err and str(alias_version(c, name, "champion").version) == "2"


def judged_corpus(root: Path, n_docs: int = 60, n_queries: int = 24) -> tuple[Path, Path]:
    """A corpus-only folder (a silver run's) of made-up passages and a .txt of made-up queries."""
    import random

    rnd = random.Random(7)
    words = ("protein cell gene heart blood risk study patients dose trial vitamin sleep brain liver mouse "
             "cancer tumor immune virus drug effect therapy children adults diet exercise bone insulin").split()
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": " ".join(rnd.choices(words, k=12))})
                                               + "\n" for i in range(n_docs)))
    queries = root.parent / "my-queries.txt"
    queries.write_text("".join(" ".join(rnd.choices(words, k=4)) + "\n" for _ in range(n_queries)))
    return root, queries


def judge_as(session, path: Path, favour: str, other: str):
    """Judge every pooled passage: relevant (2) when the ``favour`` model ranks it in its top 3
    and the ``other`` model not in its top 10, else not (0): a judged set that says ``favour``
    retrieves better. Returns the session with these answers."""
    import dataclasses

    from kadet.kit.search import ranked
    from kadet.tools.judge import Judgements

    answers = Judgements(path)
    for q in session.pool.queries:
        top, rival = ranked(session.pool.runs[favour][q.qid])[:3], ranked(session.pool.runs[other][q.qid])[:10]
        for d in q.docs:
            answers.add(q.qid, d, 2 if d in top and d not in rival else 0)
    return dataclasses.replace(session, judgements=answers)


@pytest.mark.slow
def test_judge_then_gate_promotes_the_silver_challenger_only_when_judged_better(server, models, tmp_path, capsys):
    """The person's path after a silver run: the challenger (silver, never promoted) is judged
    with ``kadet judge``; the export prints the ``kadet gate`` command; run as printed, it refuses
    on a judged set that says the challenger is worse than the champion (the champion and base
    model are the same tiny model here) and promotes it on one that says it is better."""
    from kadet.tools.judge import JudgeSettings, export, open_session

    name = "judged"
    data, queries = judged_corpus(tmp_path / "corpus")
    cfg = config(server, tmp_path, name, data, "register.require_significant_gain=true")
    base = str(models[0])
    gold = evaluated(tmp_path / "gold", "gold")
    comp = json.loads((gold / "comparison.json").read_text())
    (gold / "comparison.json").write_text(json.dumps({**comp, "models": {"base": base}}))
    silver = evaluated(tmp_path / "silver", "silver", 0.9)
    (silver / "comparison.json").write_text(json.dumps({**json.loads((silver / "comparison.json").read_text()),
                                                        "models": {"base": base}, "eval_data": "sha256:gold"}))
    run_once(cfg, models[0], gold, prepared(cfg, tmp_path / "prep"), "judged-1")         # champion v1 = the base
    assert run_once(cfg, models[1], silver, tmp_path / "prep", "judged-2", fingerprint=False) == ("registered", "2")
    c = tracking.client(cfg)
    assert str(alias_version(c, name, "challenger").version) == "2"

    session = open_session(cfg, data, queries, tmp_path / "judge", JudgeSettings(base=base, candidate=str(models[1]),
                                                                                 max_queries=24))
    worse = export(judge_as(session, tmp_path / "worse.jsonl", "base", "candidate"), tmp_path / "judged-worse")
    better = export(judge_as(session, tmp_path / "better.jsonl", "candidate", "base"), tmp_path / "judged-better")
    assert worse.next_command in worse.summary()
    assert worse.next_command == (f"kadet gate --version challenger --data {tmp_path / 'judged-worse'} --work-dir "
                                  f"{cfg.work_dir} --set tracking.tracking_uri={server} --model-name {name}")

    code, out, err = cli(shlex.split(worse.next_command)[1:], capsys)
    assert code == 1, err
    assert "refused: " in out and "below champion v1 (re-evaluated)'s" in out and "kadet promote --version 2" in out
    mv = c.get_model_version(name, "2")
    assert str(alias_version(c, name, "challenger").version) == "2" and str(alias_version(c, name, "champion").version) == "1"
    assert mv.tags["kadet.eval_kind"] == "gold" and "below champion v1" in mv.tags[FAILURE_TAG]
    assert json.loads(mv.tags["kadet.regate.before"])["eval_kind"] == "silver"

    code, out, err = cli(shlex.split(better.next_command)[1:], capsys)
    assert code == 0, out + err
    assert "passed: v2 is now the champion (was v1)" in out
    mv = c.get_model_version(name, "2")
    assert str(alias_version(c, name, "champion").version) == "2" and alias_version(c, name, "challenger") is None
    assert mv.tags["kadet.gate"] == "passed" and FAILURE_TAG not in mv.tags
    assert float(mv.tags["kadet.ndcg_at_10"]) > float(mv.tags["kadet.base_ndcg_at_10"])
