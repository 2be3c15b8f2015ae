"""The kadet command line: help texts, the evaluate command and error reporting."""

from __future__ import annotations

import json
import subprocess
import sys

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
    """One source: a flag's type, choices and help come from kadet/config.py, and _load applies it."""
    from kadet.cli import _load
    from kadet.config import CHOICES, field_docs

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
