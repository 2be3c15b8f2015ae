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
