"""``kadet export``: the plain query/document folders reproduce the source's two calls, the ONNX
graphs run with onnxruntime + tokenizers (no torch) and match torch, the registry sources
(latest, an alias, none), and every snippet of the exported README runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from kadet.core.config import load_config
from kadet.core.errors import KadetError
from tests.unit.stages.test_distill import _labels   # noqa: E402  the same tiny training data as the trainer tests

pytest.importorskip("onnxruntime")

QUERIES = ["what about aspirin 0", "what about liver 7",
           "a much longer question about coffee and liver disease in adults that runs past the query tower's sixteen "
           "token limit by a good margin"]
DOCS = ["aspirin heart passage 1", "liver coffee passage 2", " ".join(["vitamin d and bone fractures"] * 20)]
#: int8 (dynamic, per-channel weights) vs torch on the exported sample texts; what held on tiny and MiniLM.
INT8_MIN_COSINE = 0.98


def _cfg(tiny_st, tmp_path, *extra):
    return load_config(None, [f"retrieval.model={tiny_st}", f"work_dir={tmp_path / 'work'}", "distill.batch_size=8",
                              "distill.chunk_size=5", "distill.epochs=2", "distill.patience=5", "distill.lr=1e-3",
                              "distill.progress=false", "distill.passage_max_len=32", "distill.query_max_len=16",
                              *extra])


def _st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


@pytest.fixture(scope="module")
def trained(tiny_st, tmp_path_factory):
    """A query-side and a full model, each trained here from ``tiny_st`` for 2 epochs."""
    from kadet.stages.distill import distill

    root = tmp_path_factory.mktemp("trained")
    labels = _labels(root / "labels.jsonl")
    out = {}
    for mode in ("query", "full"):
        distill(_cfg(tiny_st, root / mode, f"distill.mode={mode}"), labels, root / mode / "distill")
        out[mode] = root / mode / "distill" / "model"
    return out


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from kadet.tools.export import export_model

    root = tmp_path_factory.mktemp("exported")
    cfg = load_config(None, [f"work_dir={root / 'work'}"])
    return {mode: export_model(cfg, root / mode, model=str(path)) for mode, path in trained.items()}


def _onnx_without_torch(folder, texts, file="model.onnx"):
    """Run the exported graph in a fresh interpreter that imports no torch (checked)."""
    code = ("import json, sys\nfrom kadet.tools.export import run_onnx\nfrom pathlib import Path\n"
            f"emb = run_onnx(Path({str(folder)!r}), json.loads(sys.argv[1]), file={file!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint(json.dumps(emb.tolist()))\n")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True, check=True)
    return np.array(json.loads(out.stdout), dtype=np.float32)


def test_query_side_export_splits_the_towers(trained, exported, tiny_st):
    src, base, out = _st(trained["query"]), _st(tiny_st), exported["query"].out
    assert exported["query"].mode == "query"
    query, document = _st(out / "query"), _st(out / "document")
    assert [type(m).__name__ for m in query] == ["Transformer", "Pooling", "Normalize"]   # no Router
    np.testing.assert_allclose(query.encode(QUERIES), src.encode_query(QUERIES), atol=1e-6)
    assert not np.allclose(query.encode(QUERIES), base.encode(QUERIES), atol=1e-4)        # the tuned tower
    np.testing.assert_allclose(document.encode(DOCS), src.encode_document(DOCS), atol=1e-6)
    np.testing.assert_allclose(document.encode(DOCS), base.encode(DOCS), atol=1e-6)       # the base: index stays valid
    both = _st(out / "model")                                                              # the source as is
    np.testing.assert_allclose(both.encode_query(QUERIES), src.encode_query(QUERIES), atol=1e-6)
    info = json.loads((out / "export.json").read_text())
    assert info["mode"] == "query" and info["source"]["path"] == str(trained["query"])
    assert info["base_model"] == str(tiny_st)                      # from the distill manifest beside the model
    assert set(info["fingerprints"]) == {"model", "query", "document", "base_model"}


def test_full_export_uses_one_encoder(trained, exported, tiny_st):
    src, out = _st(trained["full"]), exported["full"].out
    assert exported["full"].mode == "full"
    np.testing.assert_allclose(_st(out / "query").encode(QUERIES), src.encode_query(QUERIES), atol=1e-6)
    np.testing.assert_allclose(_st(out / "document").encode(DOCS), src.encode_document(DOCS), atol=1e-6)
    assert not np.allclose(_st(out / "document").encode(DOCS), _st(tiny_st).encode(DOCS), atol=1e-4)
    assert (out / "onnx" / "query" / "model.onnx").exists() and not (out / "onnx" / "document").exists()
    assert "omitted" in json.loads((out / "export.json").read_text())["onnx_document"]
    assert "`onnx/document/` is omitted" in (out / "README.md").read_text()


@pytest.mark.parametrize("mode,route,texts", [("query", "query", QUERIES), ("query", "document", DOCS),
                                               ("full", "query", QUERIES + DOCS)])
def test_onnx_matches_torch_without_torch(trained, exported, mode, route, texts):
    """The graph's single output is the final embedding; tokenised by the tokenizers library."""
    import onnx

    src, folder = _st(trained[mode]), exported[mode].out / "onnx" / route
    want = src.encode_query(texts) if route == "query" else src.encode_document(texts)
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [o.name for o in graph.output] == ["sentence_embedding"]
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for i in graph.input:   # dynamic batch and sequence
        assert all(d.dim_param and not d.dim_value for d in i.type.tensor_type.shape.dim)
    got = _onnx_without_torch(folder, texts)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
    config = json.loads((folder / "config.json").read_text())
    assert config["max_seq_length"] == _st(exported[mode].out / route).max_seq_length
    assert config["max_seq_length"] == (16 if mode == "query" and route == "query" else 32 if mode == "full" else 64)
    assert config["normalized"] and config["pooling"]["pooling_mode"] == "mean"
    assert config["model_int8"] == "model_int8.onnx"
    q8 = _onnx_without_torch(folder, texts, file="model_int8.onnx")
    cos = (q8 * want).sum(1) / np.linalg.norm(q8, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= INT8_MIN_COSINE
    facts = json.loads((exported[mode].out / "export.json").read_text())["onnx"][route]
    assert facts["max_abs_diff"] < 1e-4 and facts["int8"]["kept"] and facts["int8"]["min_cosine"] >= INT8_MIN_COSINE


def _python_blocks(readme: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_every_readme_snippet_runs(exported, trained):
    """The snippets are run as written (their paths are the export folder's)."""
    for mode in ("query", "full"):
        out = exported[mode].out
        blocks = _python_blocks((out / "README.md").read_text())
        assert len(blocks) == 3, mode                      # sentence-transformers, LangChain-style, onnxruntime
        src = _st(trained[mode])
        scopes = []
        for code in blocks:
            scope: dict = {}
            exec(compile(code, f"{out}/README.md", "exec"), scope)  # noqa: S102 - our own generated snippet
            scopes.append(scope)
        st_, lc, ort_ = scopes
        q = ["what does aspirin do to the risk of a heart attack"]
        d = ["Aspirin reduces the risk of heart attack in adults."]
        np.testing.assert_allclose(st_["q"], src.encode_query(q), atol=1e-6)
        np.testing.assert_allclose(st_["d2"], src.encode_document(d), atol=1e-6)
        np.testing.assert_allclose(lc["query_vector"], src.encode_query(q)[0], atol=1e-6)
        np.testing.assert_allclose(lc["vectors"], src.encode_document(d), atol=1e-6)
        np.testing.assert_allclose(ort_["embeddings"], src.encode_query(q), atol=1e-4)


def test_refuses_to_overwrite_and_no_onnx(trained, exported, tmp_path):
    from kadet.tools.export import export_model

    cfg = load_config(None, [f"work_dir={tmp_path / 'work'}"])
    with pytest.raises(KadetError, match="exists and is not empty; pass --force"):
        export_model(cfg, exported["full"].out, model=str(trained["full"]))
    r = export_model(cfg, tmp_path / "plain", model=str(trained["query"]), onnx=False)
    assert not (r.out / "onnx").exists() and (r.out / "query" / "modules.json").exists()
    assert "onnxruntime" not in (r.out / "README.md").read_text() and len(_python_blocks((r.out / "README.md").read_text())) == 2
    assert not list(tmp_path.glob(".plain.tmp-*"))           # built beside, renamed into place


@pytest.mark.parametrize("target", [".", "..", "work", "store"])
def test_force_never_replaces_a_folder_holding_the_cwd_work_dir_or_registry(tiny_st, tmp_path, monkeypatch, capsys,
                                                                             target):
    """``kadet export --out . --force`` once deleted the current folder (the temporary export was
    built inside it) and then failed: a target that is, or holds, the current directory, the work dir
    or the registry file is refused before anything is written, and nothing is deleted."""
    from kadet.cli import main

    project = tmp_path / "project"
    (project / "work").mkdir(parents=True)
    (project / "work" / "mlflow.db").write_text("registry")
    (project / "store").mkdir()
    (project / "store" / "mlflow.db").write_text("registry")
    (project / "notes.txt").write_text("keep me")
    monkeypatch.chdir(project)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv = ["export", "--out", target, "--force", "--no-onnx", "--model", str(tiny_st),
            "--work-dir", str(project / "work"), "--set", f"tracking.tracking_uri=sqlite:///{project}/store/mlflow.db"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to replace" in err and "Traceback" not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before   # nothing deleted, nothing left


def _register(work, model_dir, name):
    """Register a version the way kadet's register step does (log_model + register_model), sqlite store."""
    import mlflow

    from kadet.registry import tracking
    from kadet.registry.register import pip_requirements, serving_signature

    cfg = load_config(None, [f"work_dir={work}", f"register.model_name={name}"])
    tracking.activate(cfg)
    with mlflow.start_run():
        st = _st(model_dir)
        info = mlflow.sentence_transformers.log_model(st, name="model", pip_requirements=pip_requirements(),
                                                      signature=serving_signature(st))
    mv = mlflow.register_model(info.model_uri, name)
    tracking.client(cfg).set_model_version_tag(name, mv.version, "kadet.base_model", "all-MiniLM-L6-v2")
    return cfg, str(mv.version)


def test_export_from_the_registry(trained, tmp_path, capsys, monkeypatch):
    from kadet.cli import main

    work = tmp_path / "work"
    cfg, v1 = _register(work, trained["full"], "kadet-embedding")
    _, v2 = _register(work, trained["query"], "kadet-embedding")
    assert (v1, v2) == ("1", "2")
    from kadet.registry import tracking

    tracking.client(cfg).set_registered_model_alias("kadet-embedding", "champion", v1)
    import mlflow

    mlflow.set_tracking_uri(None)                       # _register made the store the process default: undo it,
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)   # so the exports below find it by --work-dir alone
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)

    assert main(["export", "--work-dir", str(work), "--out", str(tmp_path / "latest"), "--no-onnx"]) == 0
    printed = capsys.readouterr().out
    assert "models:/kadet-embedding/2" in printed and f"{tmp_path / 'latest'}/query" in printed
    info = json.loads((tmp_path / "latest" / "export.json").read_text())
    assert info["source"]["model_uri"] == "models:/kadet-embedding/2" and info["mode"] == "query"
    assert info["base_model"] == "all-MiniLM-L6-v2"
    src = _st(trained["query"])
    np.testing.assert_allclose(_st(tmp_path / "latest" / "query").encode(QUERIES), src.encode_query(QUERIES), atol=1e-6)
    readme = (tmp_path / "latest" / "README.md").read_text()
    assert "mlflow models serve -m models:/kadet-embedding/2" in readme

    assert main(["export", "--work-dir", str(work), "--out", str(tmp_path / "champ"), "--version", "champion",
                 "--no-onnx"]) == 0
    info = json.loads((tmp_path / "champ" / "export.json").read_text())
    assert info["source"]["version"] == "1" and info["source"]["alias"] == "champion" and info["mode"] == "full"

    capsys.readouterr()
    assert main(["export", "--work-dir", str(work), "--out", str(tmp_path / "none"), "--model-name", "nothing-here",
                 "--no-onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kadet: error: export: model 'nothing-here' has no versions in the registry at sqlite:///")
    assert len(err.splitlines()) == 1
    assert main(["export", "--work-dir", str(work), "--out", str(tmp_path / "ch"), "--version", "challenger",
                 "--no-onnx"]) == 2
    assert "has no alias 'challenger'" in capsys.readouterr().err
    import os

    assert os.environ.get("MLFLOW_TRACKING_URI") is None       # the exports above left the process as it was
    assert main(["export", "--work-dir", str(work), "--out", str(tmp_path / "both"), "--model", "m", "--version", "1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["export", "--work-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "e")]) == 2
    assert "no MLflow store at sqlite:///" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()                  # a missing store is not created


@pytest.mark.slow
def test_the_readme_serve_snippet_answers(trained, tmp_path):
    """The bash block of an export from the registry: ``mlflow models serve`` + the curl call."""
    import os
    import urllib.request
    from pathlib import Path

    from kadet.tools.export import export_model
    from tests.doubles.servers import free_port, stop, wait_until_ready

    cfg, version = _register(tmp_path / "work", trained["query"], "served")
    r = export_model(cfg, tmp_path / "out", version=version, onnx=False)
    bash = re.findall(r"```bash\n(.*?)```", (r.out / "README.md").read_text(), flags=re.S)
    serve, curl = bash[0].strip().splitlines()
    port = free_port()
    serve, curl = serve.replace("-p 5001", f"-p {port}"), curl.replace(":5001", f":{port}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(["bash", "-c", f"exec env {serve}"], stdout=log, stderr=subprocess.STDOUT, env=env)

    def ready():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
            return resp.status == 200

    try:
        wait_until_ready(proc, ready, "mlflow models serve", 120, lambda: (tmp_path / "serve.log").read_text()[-2000:])
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, check=True).stdout
        got = np.array(json.loads(out)["predictions"])
        want = _st(trained["query"]).encode_query(["what does aspirin do to the risk of a heart attack"])
        np.testing.assert_allclose(got, want, atol=1e-5)
    finally:
        stop(proc)
        log.close()


def test_a_model_with_prompts_keeps_them_per_tower(tiny_st, tmp_path):
    """encode_query adds the "query" prompt, encode_document the "document" one: the plain folders
    make them their default prompt, and the ONNX config names the one to prepend."""
    from kadet.tools.export import export_model, run_onnx

    src = _st(tiny_st)
    src.prompts = {"query": "query: ", "document": "passage: "}
    src.save(str(tmp_path / "prompted"))
    src = _st(tmp_path / "prompted")
    r = export_model(load_config(None, [f"work_dir={tmp_path / 'work'}"]), tmp_path / "out", model=str(tmp_path / "prompted"))
    np.testing.assert_allclose(_st(r.out / "query").encode(QUERIES), src.encode_query(QUERIES), atol=1e-6)
    np.testing.assert_allclose(_st(r.out / "document").encode(DOCS), src.encode_document(DOCS), atol=1e-6)
    assert not np.allclose(src.encode_query(DOCS), src.encode_document(DOCS), atol=1e-4)
    assert json.loads((r.out / "onnx" / "query" / "config.json").read_text())["prompt"] == "query: "
    assert np.abs(run_onnx(r.out / "onnx" / "query", QUERIES) - src.encode_query(QUERIES)).max() < 1e-4
