"""Retention (``kadet prune``): a work dir laid out as runs leave it (real files with real ages,
pipeline runs and registry versions in a real MLflow sqlite store at ``<work_dir>/mlflow.db``,
versions registered by the real register path from tiny models): what goes, what never does,
dry run, idempotence, and the CLI."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kadet.registry import tracking
from kadet.core.config import load_config
from kadet.tools.prune import auto_prune, format_removals, plan, prune
from tests.doubles.data import make_tiny_st

DAY = 86400.0
NOW = time.time()


def _age(path: Path, days: float) -> Path:
    """Set the modification time of ``path`` and everything under it to ``days`` ago."""
    t = NOW - days * DAY
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(os.path.join(root, name), (t, t))
    os.utime(path, (t, t))
    return path


def _write(path: Path, size: int = 1000, days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return _age(path, days) if days else path


def _cfg(work: Path, *extra):
    return load_config(None, [f"work_dir={work}", "register.model_name=prune-test", "register.confidence=0",
                              "register.ndcg_floor=0", "register.promote_settle_s=0", *extra])


def _pipeline_runs(cfg, runs: list[tuple[str, float, str]]) -> None:
    """Parent runs as a pipeline run leaves them: tag kadet.pipeline_run, a start time, a status."""
    c = tracking.client(cfg)
    exp = tracking.experiment_id(cfg)
    for key, days, status in runs:
        r = c.create_run(exp, start_time=int((NOW - days * DAY) * 1000), tags={tracking.PIPELINE_TAG: key},
                         run_name=f"kadet-{key}")
        c.set_terminated(r.info.run_id, status, end_time=int((NOW - days * DAY + 600) * 1000))


# r1 oldest ... r5 newest; r3 is the newest successful run
RUNS = [("r1", 5, "FINISHED"), ("r2", 4, "FAILED"), ("r3", 3, "FINISHED"), ("r4", 2, "FAILED"), ("r5", 1, "FAILED")]


def _files(work: Path) -> None:
    """What five runs leave: KFP outputs, console and stage logs, resume logs, kept stores."""
    for i, (key, days, _) in enumerate(RUNS):
        _write(work / "kfp" / f"kadet-2026-01-0{i + 1}" / "distill" / "model" / "weights.bin", 5000)
        _age(work / "kfp" / f"kadet-2026-01-0{i + 1}", days)
        _write(work / "logs" / f"kadet-run-2026010{i + 1}.log", 300, days)
        _write(work / "logs" / f"kadet-run-2026010{i + 1}.events.jsonl", 200, days)
        _write(work / "logs" / key / "distill.log", 100)
        _age(work / "logs" / key, days)
        _write(work / "resume" / key / "label-0-of-1" / "scores.shard-0.jsonl", 700)
        _age(work / "resume" / key, days)
    for key, days in (("unknown-old", 4), ("unknown-new", 2.5), ("writing-now", 0)):  # before / after r3 started
        _write(work / "resume" / key / "generate-0-of-1" / "generations.jsonl", 400)
        _age(work / "resume" / key, days)
    stores = {"generate/d-r1": ("r1", 5), "generate/d-r3": ("r3", 3), "label/d-r5": ("r5", 1),
              "label/d-r2": ("r2", 4), "label/d-busy": ("cluster-run", 0.01)}
    for name, (key, days) in stores.items():
        folder = work / "store" / name
        _write(folder / "seg-0.jsonl", 2000)
        (folder / "used.json").write_text(json.dumps({"run": key, "time": NOW - days * DAY}))
        _age(folder, days)
    _write(work / "store" / "label" / "d-no-used-old" / "seg-0.jsonl", 900)
    _age(work / "store" / "label" / "d-no-used-old", 2)
    _write(work / "store" / "label" / "d-no-used-new" / "seg-0.jsonl", 900)


def _register(cfg, model: Path, ndcg: float, i: int) -> str:
    """Register ``model`` the way the register and promote steps do (its own experiment, so its
    runs are not among the pipeline runs above)."""
    from kadet.kit.comparison import Comparison
    from kadet.registry.promotion import mark_challenger, promote
    from kadet.registry.register import register_candidate

    comparison = Comparison(eval_data="sha256:same", candidate={"ndcg@10": ndcg, "recall@100": 0.9},
                            base={"ndcg@10": 0.5, "recall@100": 0.9}, models={"base": "all-MiniLM-L6-v2"})
    with tracking.stage_run(cfg, "register", pipeline_run=f"register-{i}"):
        r = register_candidate(cfg, model, comparison, f"register-{i}")
    if r.decision.promote:
        promote(cfg, r.version)
    else:
        mark_challenger(cfg, r.version, r.decision.reason)
    return r.version


@pytest.fixture
def work(tmp_path, tmp_path_factory):
    """The work dir, and the registry: v1 champion then superseded by v3 (a former champion),
    v2, v4, v5 refused, v6 refused and the challenger."""
    import mlflow

    work = tmp_path / "work"
    _files(work)
    cfg = _cfg(work)
    _pipeline_runs(cfg, RUNS)
    reg_cfg = _cfg(work, "tracking.experiment=registry")
    models = [make_tiny_st(tmp_path_factory.mktemp(f"m{i}"), seed=i) for i in range(6)]
    versions = [_register(reg_cfg, m, nd, i) for i, (m, nd) in enumerate(zip(models, (0.7, 0.6, 0.8, 0.65, 0.66, 0.61)))]
    assert versions == ["1", "2", "3", "4", "5", "6"]
    for i in range(6):                # their stage logs: as if written before the pipeline runs above
        _age(work / "logs" / f"register-{i}", 10)
    mlflow.set_tracking_uri(None)     # the stage runs made this store the process default: undo it,
    mlflow.set_registry_uri(None)     # so the store is found from the work dir alone
    return work


EXPECTED = {   # keep 2
    ("kfp", "kfp/kadet-2026-01-01"), ("kfp", "kfp/kadet-2026-01-02"), ("kfp", "kfp/kadet-2026-01-03"),
    ("logs", "logs/kadet-run-20260101.*"), ("logs", "logs/kadet-run-20260102.*"), ("logs", "logs/kadet-run-20260103.*"),
    ("logs", "logs/r1"), ("logs", "logs/r2"), ("logs", "logs/r3"), *{("logs", f"logs/register-{i}") for i in range(6)},
    # r1, r2, r3 (the newest successful run itself) and the unknown run written before r3 started
    ("resume", "resume/r1"), ("resume", "resume/r2"), ("resume", "resume/r3"), ("resume", "resume/unknown-old"),
    # newest 2 runs: cluster-run (store time, 15 min ago) and r5; plus r3, the newest successful
    ("store", "store/generate/d-r1"), ("store", "store/label/d-r2"), ("store", "store/label/d-no-used-old"),
    ("model", "prune-test v2"),
}


def _logged_model_dir(cfg, version: str) -> Path:
    """The version's sentence-transformers folder in the local artifact store."""
    from kadet.registry.register import local_model_dir

    c = tracking.client(cfg)
    return local_model_dir(c.get_model_version_download_uri("prune-test", version), tracking.tracking_uri(cfg))


def test_prune_keeps_what_later_runs_need_and_removes_the_rest(work):
    cfg = _cfg(work)
    c = tracking.client(cfg)
    v2_files = _logged_model_dir(cfg, "2")
    assert (v2_files / "modules.json").exists() and v2_files.parts[-4:-2] == ("models", v2_files.parts[-3])
    before = {p for p in work.rglob("*")}

    dry = plan(cfg, keep=2)
    assert {(r.kind, r.what) for r in dry} == EXPECTED
    sizes = {r.what: r.size for r in dry}
    assert sizes["kfp/kadet-2026-01-01"] == 5000 and sizes["logs/kadet-run-20260101.*"] == 500
    assert sizes["store/generate/d-r1"] == 2000 + len(json.dumps({"run": "r1", "time": NOW - 5 * DAY}))
    assert sizes["prune-test v2"] > 100_000                            # the logged model's files
    text = format_removals(dry, dry_run=True, keep=2)
    assert "would remove 23 item(s)" in text and "prune-test v2" in text and "4.9 KB  kfp    kfp/kadet-2026-01-01" in text
    assert {p for p in work.rglob("*")} == before                       # planning removed nothing

    done = prune(cfg, keep=2)
    assert {(r.kind, r.what) for r in done} == EXPECTED
    for r in done:
        if r.kind != "model":
            assert not (work / r.what.removesuffix(".*")).exists() and not list(work.glob(r.what))
    kept = ["kfp/kadet-2026-01-04", "kfp/kadet-2026-01-05", "logs/kadet-run-20260105.log", "logs/r4", "logs/r5",
            "resume/r4", "resume/r5", "resume/unknown-new", "resume/writing-now", "store/generate/d-r3",
            "store/label/d-r5", "store/label/d-busy", "store/label/d-no-used-new"]
    assert all((work / k).exists() for k in kept), [k for k in kept if not (work / k).exists()]

    # registry: v2 gone with its files; the champion, a former champion, the challenger and the
    # newest two refused versions stay; the run that refused v2 keeps its record
    assert sorted(int(v.version) for v in c.search_model_versions("name = 'prune-test'")) == [1, 3, 4, 5, 6]
    assert not v2_files.parents[1].exists()                             # models/<logged model id>/ gone
    assert str(c.get_model_version_by_alias("prune-test", "champion").version) == "3"
    assert str(c.get_model_version_by_alias("prune-test", "challenger").version) == "6"
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(_logged_model_dir(cfg, "3"))).encode(["q"]).shape == (1, 32)
    refusals = c.search_runs([c.get_experiment_by_name("registry").experiment_id],
                             filter_string="tags.`kadet.pipeline_run` = 'register-1' and attributes.run_name = 'register'")
    assert refusals and refusals[0].data.tags["kadet.model_version"] == "2"

    assert plan(cfg, keep=2) == []                                      # idempotent


def test_a_copied_work_dir_never_deletes_the_model_files_of_the_one_it_was_copied_from(work, tmp_path):
    """A copy's mlflow.db still points at the original's mlartifacts: pruning the copy deletes the
    version in the copy's registry but leaves files outside the copy where they are."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(work, copy)
    original_v2 = _logged_model_dir(_cfg(work), "2")
    models = [r for r in plan(_cfg(copy), keep=2) if r.kind == "model"]
    assert [(r.what, r.size, r.paths) for r in models] == [("prune-test v2", None, ())]
    assert "model files outside the work dir, left in place" in format_removals(models, dry_run=False, keep=2)
    prune(_cfg(copy), keep=2)
    assert original_v2.exists()
    assert sorted(int(v.version) for v in tracking.client(_cfg(copy)).search_model_versions("name = 'prune-test'")) \
        == [1, 3, 4, 5, 6]
    assert sorted(int(v.version) for v in tracking.client(_cfg(work)).search_model_versions("name = 'prune-test'")) \
        == [1, 2, 3, 4, 5, 6]


def test_nothing_of_a_failing_streak_is_pruned_before_a_success(tmp_path):
    """Without any successful run every resume log may still be needed, and the newest run's
    outputs are never pruned (keep >= 1)."""
    work = tmp_path / "work"
    cfg = _cfg(work)
    _pipeline_runs(cfg, [("f1", 3, "FAILED"), ("f2", 2, "FAILED")])
    for key, days in (("f1", 3), ("f2", 2)):
        _write(work / "resume" / key / "generate-0-of-1" / "generations.jsonl", 100, days)
        _write(work / "kfp" / f"kadet-{key}" / "x.bin", 100, days)
    assert [(r.kind, r.what) for r in plan(cfg, keep=1)] == [("kfp", "kfp/kadet-f1")]
    from kadet.core.errors import KadetError

    with pytest.raises(KadetError, match="must be >= 1"):
        plan(cfg, keep=0)


def test_auto_prune_runs_only_when_asked(tmp_path):
    work = tmp_path / "work"
    for i in range(3):
        _write(work / "kfp" / f"kadet-run-{i}" / "x.bin", 100, 3 - i)
    assert auto_prune(_cfg(work)) is None and len(list((work / "kfp").iterdir())) == 3   # retention.auto off
    line = auto_prune(_cfg(work, "retention.auto=true", "retention.keep_runs=1"))
    assert line.startswith("retention.auto: removed 2 item(s)")
    assert [p.name for p in (work / "kfp").iterdir()] == ["kadet-run-2"]


def test_kadet_prune_on_a_small_work_dir(tmp_path, capsys, monkeypatch):
    """The command: a dry run prints what would go with sizes and removes nothing; then it removes;
    --keep must be a positive integer; an MLflow store it cannot read stops it before anything goes."""
    from kadet.cli import main

    work = tmp_path / "work"
    for i in range(4):
        _write(work / "kfp" / f"kadet-2026-02-0{i}" / "register" / "report.html", 2048, 4 - i)
        _write(work / "logs" / f"kadet-run-2026020{i}.log", 100, 4 - i)
    assert main(["prune", "--work-dir", str(work), "--keep", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "    2.0 KB  kfp    kfp/kadet-2026-02-00  (older than the newest 2 runs' KFP outputs)" in out
    assert "kadet prune: would remove 4 item(s), 4.2 KB" in out
    assert len(list((work / "kfp").iterdir())) == 4
    assert main(["prune", "--work-dir", str(work), "--keep", "2"]) == 0
    assert "kadet prune: removed 4 item(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (work / "kfp").iterdir()) == ["kadet-2026-02-02", "kadet-2026-02-03"]
    assert sorted(p.name for p in (work / "logs").iterdir()) == ["kadet-run-20260202.log", "kadet-run-20260203.log"]
    with pytest.raises(SystemExit):
        main(["prune", "--work-dir", str(work), "--keep", "0"])
    assert "--keep: 0 must be >= 1" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")      # fail at once, not after minutes of retries
    assert main(["prune", "--work-dir", str(work), "--keep", "1", "--set", "tracking.tracking_uri=http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kadet: error: prune: cannot read the runs and registry at http://127.0.0.1:9 (")
    assert err.strip().endswith("nothing removed") and len(err.strip().splitlines()) == 1
    assert len(list((work / "kfp").iterdir())) == 2
