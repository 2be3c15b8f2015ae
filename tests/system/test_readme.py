"""Every Python snippet in README.md runs, against a query-side model trained here and exported
with ``kadet export`` (so the README's calls cannot rot), and the calls say what they claim: the
query embeddings are the tuned ones, the document embeddings the base model's."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def readme_snippets() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [re.sub(r"(?m)^  ", "", b) if b.startswith("  ") else b for b in BLOCK.findall(text)]


def test_the_readme_has_snippets_for_each_way_of_using_the_model():
    joined = "\n".join(readme_snippets())
    assert 'SentenceTransformer("adapted/model")' in joined and 'SentenceTransformer("adapted/query")' in joined
    assert "csv.DictReader" in joined                     # the conversion example


@pytest.mark.slow
def test_every_readme_snippet_runs_on_an_exported_query_side_model(tiny_st, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from kadet.core.config import load_config
    from kadet.stages.distill import distill
    from kadet.tools.export import export_model
    from tests.unit.stages.test_distill import _cfg, _labels

    labels = _labels(tmp_path / "labels.jsonl")
    distill(_cfg(tiny_st, tmp_path, "distill.mode=query", "distill.epochs=2"), labels, tmp_path / "q")
    monkeypatch.chdir(tmp_path)
    export_model(load_config(None, [f"work_dir={tmp_path / 'work'}"]), "adapted", model=str(tmp_path / "q" / "model"),
                 onnx=False)
    Path("docs.csv").write_text("id,title,body\n1,Aspirin,Aspirin reduces heart attacks.\n", encoding="utf-8")
    spaces = []
    for code in readme_snippets():
        space: dict = {}
        exec(compile(code, "README.md", "exec"), space)   # noqa: S102 - the README's own code
        spaces.append(space)
    assert Path("corpus.jsonl").read_text().startswith('{"_id": "1", "title": "Aspirin"')
    base = SentenceTransformer(str(tiny_st), device="cpu")
    first = next(s for s in spaces if "queries" in s and "docs" in s)
    q = "does aspirin lower the risk of a heart attack"
    np.testing.assert_allclose(first["queries"], first["model"].encode_query([q]), atol=1e-6)
    assert not np.allclose(first["queries"], base.encode([q]), atol=1e-4)            # tuned, not the base
    np.testing.assert_allclose(first["docs"], base.encode(["Aspirin reduces the risk of heart attack in adults."]),
                               atol=1e-5)
    second = next(s for s in spaces if "query_model" in s)
    np.testing.assert_allclose(second["doc_model"].encode(["x y"]), base.encode(["x y"]), atol=1e-5)
    np.testing.assert_allclose(second["query_model"].encode([q]), first["queries"], atol=1e-5)
