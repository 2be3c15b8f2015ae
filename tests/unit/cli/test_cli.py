"""The kadet command line: help texts, the evaluate command and error reporting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kadet.cli import build_parser, main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "evaluate" in out and "config" in out


def test_each_subcommand_has_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "--config" in out and "--set" in out, name


#: What each subcommand needs to parse at all (its required flags and positionals).
REQUIRED = {"run": ["--data", "d"], "plan": ["--data", "d"], "judge": ["--model", "m"], "export": ["--out", "o"],
            "submit": ["--host", "h"], "schedule": ["--host", "h", "--cron", "0 3 * * 1"],
            "models": ["stage", "src", "dest"], "data": ["get", "scifact", "dest"],
            "gate": ["--version", "challenger"], "promote": ["--version", "2", "--reason", "r"]}


def test_one_record_per_subcommand_and_main_honours_its_lock_and_config_flags(tmp_path, capsys, monkeypatch):
    """The CLI is one table: each subcommand ``kadet --help`` lists has exactly one record in
    COMMANDS, which its parser hands to main; a record without ``config`` takes no --profile, and
    while another holder has the work dir's lock a command that ``locks`` is refused before its
    handler runs, one that does not runs (so do all of them on torchrun ranks > 0)."""
    import dataclasses
    import os
    import re

    from kadet.cli import COMMANDS, _by_name
    from kadet.core.storage import work_dir_lock

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = re.findall(r"^ {4}(\S+)", capsys.readouterr().out, re.M)
    assert listed == list(COMMANDS) and all(name == c.name for name, c in COMMANDS.items())
    with pytest.raises(ValueError, match="two records for kadet config"):
        _by_name([COMMANDS["config"], COMMANDS["prune"], COMMANDS["config"]])
    parser = build_parser()
    for name, command in COMMANDS.items():
        assert parser.parse_args([name, *REQUIRED.get(name, [])])._command is command, name
        if not command.config and not any(opt.flag == "--profile" for opt in command.opts):
            with pytest.raises(SystemExit):
                parser.parse_args([name, *REQUIRED.get(name, []), "--profile", "local"])
    assert {n for n, c in COMMANDS.items() if not c.config} == {"submit", "schedule", "models", "data"}
    assert {n for n, c in COMMANDS.items() if not c.locks} == {"config", "plan", "submit", "schedule", "judge",
                                                                "data", "export", "models", "promote"}
    capsys.readouterr()

    work, ran = tmp_path / "work", []

    def stub(args) -> int:
        ran.append(args.command)
        return 0

    with work_dir_lock(work, "kadet holder"):   # an flock of its own: to main, another holder
        assert main(["config", "--work-dir", str(work)]) == 0                      # the real commands
        assert f"work_dir: {work}" in capsys.readouterr().out
        assert main(["prune", "--dry-run", "--work-dir", str(work)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and f"work dir {work} is in use by pid {os.getpid()} (kadet holder" in err
        for name, command in COMMANDS.items():                                     # every record's flag
            monkeypatch.setitem(COMMANDS, name, dataclasses.replace(command, run=stub))
            assert main([name, *REQUIRED.get(name, []), "--work-dir", str(work)]) == (2 if command.locks else 0), name
            assert ("is in use by" in capsys.readouterr().err) == command.locks, name
        assert ran == [n for n, c in COMMANDS.items() if not c.locks]
        monkeypatch.setenv("RANK", "1")
        assert main(["prune", "--work-dir", str(work)]) == 0 and ran[-1] == "prune"


def test_evaluate_command(tiny_beir, tmp_path, capsys):
    rc = main(["evaluate", "--data", str(tiny_beir), "--retriever", "bm25", "--work-dir", str(tmp_path), "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["ndcg@10"] == pytest.approx(1.0)
    assert (tmp_path / "evaluate" / "bm25" / "manifest.json").exists()


def test_bad_data_exits_2_with_file_and_line(tiny_beir, tmp_path):
    with open(tiny_beir / "corpus.jsonl", "a") as fh:
        fh.write('{"_id": "d9", "text": \n')
    proc = subprocess.run(
        [sys.executable, "-m", "kadet.cli", "evaluate", "--data", str(tiny_beir), "--retriever", "bm25",
         "--work-dir", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert f"{tiny_beir / 'corpus.jsonl'}:5: malformed JSON" in proc.stderr


def test_config_command_prints_overrides(capsys):
    assert main(["config", "--set", "retrieval.top_k=5"]) == 0
    assert "top_k: 5" in capsys.readouterr().out


def test_flags_are_config_shortcuts_derived_from_the_typed_config(capsys):
    """One source: a flag's type, choices and help come from kadet/core/config.py, and _load applies it."""
    from kadet.cli import _load
    from kadet.core.config import CHOICES, field_docs

    parser = build_parser()
    cfg = _load(parser.parse_args(["distill", "--mode", "full", "--epochs", "3", "--set", "distill.lr=1e-3"]))
    assert cfg.distill.mode == "full" and cfg.distill.epochs == 3 and cfg.distill.lr == 1e-3
    cfg = _load(parser.parse_args(["generate", "--types", "question,claim", "--max-passages", "0"]))
    assert cfg.generate.types == {"question": 1.0, "claim": 1.0} and cfg.generate.max_passages == 0
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--mode", "half"])                 # choices from CHOICES
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--epochs", "0"])                  # ranges from RANGES
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "{" + ",".join(CHOICES["retrieval.retriever"]) + "}" in out and "(config: retrieval.retriever)" in out
    assert " ".join(field_docs()["data.split"].split()) in out


# --- --data checked before anything starts; failed evaluate leaves no empty folder; --profile everywhere ---


def test_the_lock_is_on_the_work_dir_the_run_then_uses(tmp_path, tiny_beir, capsys, monkeypatch):
    """``work_dir`` from --set or from a --config file is the folder kadet run both locks and runs in
    (was: the lock on that folder, the run in .kadet, so a second run slipped past the first's lock)."""
    import kadet.kubeflow.local
    from kadet.core.errors import KadetError
    from kadet.core.storage import work_dir_lock

    used = []

    def run_local(data, work_dir, **kw):
        used.append((work_dir, (Path(work_dir) / ".kadet.lock").read_text().splitlines()[0]))
        raise KadetError("stop here")

    monkeypatch.setattr(kadet.kubeflow.local, "run_local", run_local)
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other"
    (tmp_path / "c.yaml").write_text(f"work_dir: {other}\n")
    with work_dir_lock(tmp_path / ".kadet", "kadet run (the plain one)"):   # a plain `kadet run` is running
        for flags in (["--set", f"work_dir={other}"], ["--config", "c.yaml"]):
            assert main(["run", "--no-plan", "--data", str(tiny_beir), *flags]) == 2
            assert "stop here" in capsys.readouterr().err
        with work_dir_lock(other, "kadet holder"):
            assert main(["run", "--no-plan", "--data", str(tiny_beir), "--set", f"work_dir={other}"]) == 2
            assert f"work dir {other} is in use by" in capsys.readouterr().err
    assert [Path(w) for w, _ in used] == [other, other]
    assert all("(kadet run, since" in line for _, line in used)


@pytest.mark.parametrize("make", ["missing", "no_corpus"])
def test_run_and_plan_check_data_before_any_task(tmp_path, capsys, monkeypatch, make):
    """A wrong local --data is one line and exit 2, naming the path and what is missing, before KFP
    (or the plan's timing) starts."""
    import kfp.local

    import kadet.tools.plan

    def started(*a, **k):
        raise AssertionError("started before checking --data")

    monkeypatch.setattr(kfp.local, "init", started)
    monkeypatch.setattr(kadet.tools.plan, "make_plan", started)
    data = tmp_path / "data"
    if make == "no_corpus":
        data.mkdir()
        (data / "queries.jsonl").write_text("")
    for argv in (["run", "--no-plan"], ["run"], ["plan"]):
        rc = main([*argv, "--data", str(data), "--work-dir", str(tmp_path / "work")])
        out, err = capsys.readouterr()
        assert rc == 2, argv
        assert out == "" and len(err.strip().splitlines()) == 1, (argv, out, err)
        assert f"--data {data}:" in err and "corpus.jsonl" in err
        assert ("no such file or folder" if make == "missing" else "has no corpus.jsonl or corpus.parquet") in err


def test_run_local_checks_data_itself(tmp_path, monkeypatch):
    import kfp.local

    from kadet.core.errors import KadetError
    from kadet.kubeflow.local import run_local

    monkeypatch.setattr(kfp.local, "init", lambda *a, **k: pytest.fail("KFP started"))
    with pytest.raises(KadetError, match="no such file or folder"):
        run_local(str(tmp_path / "nope"), str(tmp_path / "work"))


def test_failed_evaluate_leaves_no_empty_folder(tmp_path, capsys):
    work = tmp_path / "work"
    rc = main(["evaluate", "--data", str(tmp_path / "nope"), "--retriever", "bm25", "--work-dir", str(work)])
    assert rc == 2 and "nope" in capsys.readouterr().err
    assert not (work / "evaluate").exists()
    # a folder that was there before, with content or empty, is kept as it was
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old.txt").write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (kept, empty, tmp_path / "new" / "deeper"):
        assert main(["evaluate", "--data", str(tmp_path / "nope"), "--retriever", "bm25", "--work-dir", str(work),
                     "--output", str(out)]) == 2
    assert (kept / "old.txt").read_text() == "x" and empty.is_dir() and not (tmp_path / "new").exists()


def _config_commands() -> list[str]:
    from kadet.cli import COMMANDS

    return [n for n in ("evaluate", "prepare", "generate", "mine", "label", "distill", "teacher-report", "config",
                        "judge", "export") if n in COMMANDS]


def test_config_profile_local_is_what_run_uses(capsys):
    from kadet.kubeflow.local import local_config_text

    assert main(["config", "--profile", "local"]) == 0
    out, err = capsys.readouterr()
    assert out == local_config_text(None, None, "local") and err == ""
    assert main(["config", "--profile", "gpu", "--set", "retrieval.top_k=7"]) == 0
    assert capsys.readouterr().out == local_config_text(None, ["retrieval.top_k=7"], "gpu")


def test_every_config_command_takes_profile(tmp_path, capsys):
    from kadet.cli import _load
    from kadet.core.config import profile_config

    local = profile_config("local")
    own = tmp_path / "mine.yaml"
    own.write_text("prepare: {sample_size: 123}\nretrieval: {top_k: 11}\n")
    extra = {"judge": ["--model", "m"], "export": ["--out", "o"]}
    parser = build_parser()
    for name in _config_commands():
        cfg = _load(parser.parse_args([name, "--profile", "local", *extra.get(name, [])]))
        assert cfg.prepare.sample_size == local.prepare.sample_size and cfg.distill.mode == local.distill.mode, name
        cfg = _load(parser.parse_args([name, "--profile", str(own), "--set", "retrieval.top_k=12",
                                       *extra.get(name, [])]))
        assert (cfg.prepare.sample_size, cfg.retrieval.top_k) == (123, 12), name  # --set over the profile file
    assert parser.parse_args(["run", "--data", "d"]).profile == "local"  # run and plan keep their default
    assert parser.parse_args(["plan", "--data", "d"]).profile == "local"
    capsys.readouterr()


def test_stage_commands_without_profile_warn_once(tmp_path, capsys, tiny_beir):
    from kadet.cli import _load

    parser = build_parser()
    required = {"judge": ["--model", "m"], "export": ["--out", "o"]}
    for name in _config_commands():
        _load(parser.parse_args([name, *required.get(name, [])]))
        err = capsys.readouterr().err
        if name in ("config", "judge", "export"):
            assert err == "", name
        else:
            assert len(err.splitlines()) == 1 and "paper-scale" in err and "--profile local" in err, name
        _load(parser.parse_args([name, "--profile", "local", *required.get(name, [])]))
        assert capsys.readouterr().err == ""
    assert main(["evaluate", "--data", str(tiny_beir), "--retriever", "bm25", "--work-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().err.count("paper-scale") == 1


def test_teacher_report_command_prints_its_table(tiny_beir, tmp_path, capsys):
    """Was: ``kadet teacher-report`` computed its rows, then died with ``KeyError: 'ndcg@10'``."""
    code = main(["teacher-report", "--data", str(tiny_beir), "--teacher", "dense", "--teacher", "bm25",
                 "--depth", "3", "--work-dir", str(tmp_path), "--grid", "bm25=0,1", "--profile", "local"])
    out = capsys.readouterr().out
    assert code == 0 and "3 test queries, reranking the base top-3" in out
    rows = {line.split()[0]: float(line.split()[-1]) for line in out.splitlines()
            if line.split() and line.split()[0] in ("dense", "bm25")}
    assert set(rows) == {"dense", "bm25"} and all(0 <= v <= 1 for v in rows.values())
    assert "ensemble weight grid" in out


# --- every stage subcommand from the command line; component typos fail at load ---


def test_stage_commands_chain_on_small_data(scifact, tiny_st, tmp_path, capsys):
    """prepare -> generate -> mine -> label (score, then merge) -> distill -> evaluate, each as
    ``kadet <stage>`` with its default inputs in the work dir: exit 0, its summary line, its files."""
    from tests.doubles.data import scifact_slice

    data = scifact_slice(tmp_path / "data", n_queries=5, n_docs=40)
    extra = tmp_path / "extra.tsv"
    first = json.loads((data / "corpus.jsonl").read_text().splitlines()[-1])["_id"]
    extra.write_text(f"query-id\tcorpus-id\tscore\nx\t{first}\t1\n")
    (tmp_path / "small.yaml").write_text(
        f"retrieval: {{model: {tiny_st}}}\nprepare: {{sample_size: 0}}\n"
        "mine: {min_candidates: 3, max_candidates: 10}\n"
        "label: {teacher: bm25, rerank_depth: 10, list_size: 4, min_top_percentile: 0, consistency: false}\n"
        "distill: {epochs: 1, batch_size: 8, chunk_size: 8, passage_max_len: 32, query_max_len: 16, bf16: false}\n")
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "--profile", "local", "--config", str(tmp_path / "small.yaml")]
    runs = [(["prepare", "--data", str(data), "--exclude-qrels", str(extra)], "prepare: kept ", "prepare/passages.jsonl"),
            (["generate"], "generate: kept ", "generate/queries.jsonl"),
            (["mine"], "mine: kept ", "mine/candidates.jsonl"),
            (["label", "--score-only"], "label: scored ", "label/manifest.json"),
            (["label", "--merge-only"], "queries labelled", "label/labels.jsonl"),
            (["distill"], "distill: 1 epochs, best epoch", "distill/model"),
            (["evaluate", "--data", str(data), "--model", str(work / "distill" / "model")], "5 queries, split test",
             "evaluate/dense/metrics.json")]
    for argv, said, wrote in runs:
        assert main([*argv, *common]) == 0, argv
        out, err = capsys.readouterr()
        assert said in out and "kadet:" not in err, (argv, out, err)            # no warning, no error
        assert (work / wrote).exists() and (work / wrote).parent.joinpath("manifest.json").exists(), wrote
    passages = [json.loads(line)["_id"] for line in (work / "prepare" / "passages.jsonl").read_text().splitlines()]
    judged = {line.split("\t")[1] for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    assert first not in judged and first not in passages       # --exclude-qrels extends prepare.exclude_qrels
    assert len(passages) == 40 - len(judged) - 1


BAD_COMPONENTS = ["label.teacher=ensmble", "label.ensemble={dense: 1, bm52: 1}", "mine.retrievers=dense,bm52",
                  "retrieval.retriever=dnse", "evaluation.retriever=bm52", "generate.backend=tgx",
                  "distill.init=champ", "distill.mode=half", "distill.loss=kl"]


@pytest.mark.parametrize("bad", BAD_COMPONENTS)
def test_a_component_typo_fails_at_load_before_any_stage_runs(bad, tiny_beir, tmp_path, capsys, monkeypatch):
    """Was: ``label.teacher=ensmble`` failed at kadet/stages/label/teachers.py, after generate and mine ran."""
    import kfp.local

    import kadet.tools.plan

    def started(*a, **k):
        raise AssertionError("started before the config was checked")

    monkeypatch.setattr(kfp.local, "init", started)
    monkeypatch.setattr(kadet.tools.plan, "make_plan", started)
    key = bad.split("=")[0]
    for argv in (["config"], ["generate", "--work-dir", str(tmp_path)],
                 ["run", "--data", str(tiny_beir), "--work-dir", str(tmp_path / "w")],
                 ["run", "--no-plan", "--data", str(tiny_beir), "--work-dir", str(tmp_path / "w")]):
        assert main([*argv, "--set", bad]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{key}'" in err and ("one of" in err or "known:" in err), (argv, err)
    assert not (tmp_path / "generate").exists()


def test_teacher_report_refuses_an_unknown_teacher_before_retrieving(tiny_beir, tmp_path, capsys):
    assert main(["teacher-report", "--data", str(tiny_beir), "--teacher", "bm52", "--work-dir", str(tmp_path),
                 "--profile", "local"]) == 2
    err = capsys.readouterr().err
    assert "--teacher 'bm52' must be one of dense, dense:PATH" in err and not (tmp_path / "teacher-report").exists()


def test_plan_command_counts_and_times_here_then_counts_the_cluster_profile(scifact, tiny_st, tmp_path, capsys):
    from tests.doubles.data import scifact_slice

    data = scifact_slice(tmp_path / "data", n_queries=5, n_docs=40)
    assert main(["plan", "--data", str(data), "--work-dir", str(tmp_path / "work"), "--set",
                 f"retrieval.model={tiny_st}", "--set", "distill.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kadet plan: {data} (profile local)") and "estimated on this machine" in out
    assert " passages of 40 documents; queries: sentence " in out
    assert "the same corpus on the gpu profile" in out and out.count("total") == 1    # the cluster: counts only
    assert not (tmp_path / "work").exists()                                        # planning writes nothing


@pytest.mark.slow
def test_run_command_end_to_end_prints_its_summary(scifact, tiny_st, tmp_path, capsys):
    """``kadet run`` from the command line on a small slice: exit 0 and the summary it prints
    (the wall time, base vs candidate, the registry outcome, where the full log is)."""
    from tests.doubles.data import scifact_slice

    data = scifact_slice(tmp_path / "data", n_queries=5, n_docs=40)
    (tmp_path / "small.yaml").write_text(
        f"retrieval: {{model: {tiny_st}}}\nprepare: {{sample_size: 0}}\nmine: {{min_candidates: 3}}\n"
        "label: {teacher: bm25, rerank_depth: 10, list_size: 4, min_top_percentile: 0}\n"
        # a random tiny model on 5 queries: the pre-flight interval is wide, so the run goes on whatever it
        # measures (its stop is tested in test_pipeline.py / test_preflight.py)
        "distill: {epochs: 1, batch_size: 8, chunk_size: 8, passage_max_len: 32, query_max_len: 16, "
        "min_teacher_lead: -1.0}\n"
        "register: {model_name: kadet-cli}\n")
    assert main(["run", "--data", str(data), "--work-dir", str(tmp_path / "work"), "--no-plan",
                 "--config", str(tmp_path / "small.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kadet run: {data} (profile local, work dir {tmp_path / 'work'})")
    assert "min; MLflow sqlite:///" in out and "(gold) base " in out and "-> candidate " in out
    assert "registered version 1: " in out and "full output (KFP, warnings): " in out


def test_a_config_file_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys):
    """Was a ``UnicodeDecodeError`` traceback."""
    bad = tmp_path / "latin.yaml"
    bad.write_bytes("# r\xe9sum\xe9\nseed: 7\n".encode("latin-1"))
    assert main(["config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{bad}:1: invalid UTF-8 byte 0xe9 at column 4" in err


def test_no_credential_in_a_tracking_uri_reaches_the_console_the_report_or_an_export():
    """Was: ``user:password@`` echoed in the usage lines (console, report.html), the report's links,
    ``kadet run``'s first line and the export's README and summary. Now each shows ``user:***@``."""
    import contextlib
    import io
    from pathlib import Path

    from kadet.cli.pipeline import print_run_summary
    from kadet.core.config import load_config
    from kadet.kit.comparison import Comparison
    from kadet.reporting.report import render
    from kadet.tools.export import ExportResult, Source, readme

    secret, uri = "s3cr3t-Pw", "http://alice:s3cr3t-Pw@mlflow.example:5000"
    cfg = load_config(None, [])
    metrics = {"ndcg@10": 0.8, "recall@100": 0.95}
    comparison = Comparison.from_json({"kind": "gold", "queries": 10, "base": metrics, "candidate": metrics})
    gate = {"promote": False, "reason": "no gain", "version": "2", "model_name": "k", "tracking_uri": uri,
            "links": {"MLflow run": f"{uri}/#/experiments/1/runs/abc", "tracking store": uri}}
    page = render({"pipeline_run": "r", "parent_run": "p", "stages": [], "files": {}}, comparison, gate, cfg, images={})
    assert secret not in page and "tracking.tracking_uri=http://alice:***@mlflow.example:5000" in page
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        print_run_summary({"seconds": 60, "tracking_uri": uri, "parent_run": "p", "base": metrics, "candidate": metrics,
                           "metrics": ["ndcg@10", "recall@100"], "eval_kind": "gold", "champion": None,
                           "version": "2", "gate": "no gain", "model_name": "k", "stages": [], "log": "run.log"})
    assert secret not in console.getvalue() and "MLflow http://alice:***@mlflow.example:5000" in console.getvalue()
    source = Source(path=Path("m"), model_uri="models:/k/2", name="k", version="2", tracking_uri=uri)
    shown = readme(Path("out"), source, "full", {}) + ExportResult(Path("out"), source, "full").summary()
    assert secret not in shown and "MLFLOW_TRACKING_URI=http://alice:***@mlflow.example:5000" in shown
