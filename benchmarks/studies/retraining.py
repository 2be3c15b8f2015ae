"""Scheduled retraining on a grown corpus: incremental (cold and warm start) vs from scratch.

SciFact as a corpus that grew: run 1 sees every document judged relevant to a test query plus a
seeded 80% of the others; then the corpus grows to all 5,183 documents at the same address. Each
run is the README's main job (``kadet run``, local profile) on one machine:

* ``run1``: 80%, a fresh work dir;
* ``cold``: 100%, a copy of run 1's work dir (its stores and registry), ``distill.init: base``;
* ``warm``: 100%, a copy of run 1's work dir, ``distill.init: champion`` (run 1's model; if the
  gate refused it, the copy makes it champion by hand, as a user may) and one epoch instead of three;
* ``scratch``: 100%, a fresh work dir: everything paid again.

For each: wall time, the LLM requests / teacher pairs done and reused (``kadet run`` summary
``work``), and nDCG@10 / Recall@100 on SciFact's test queries (reported here, never tuned on).
The local profile generates sentence queries (no LLM), so generate's work is counted in
sentence-free passages only when an LLM type is configured; the teacher pairs are the dense
member's (BM25 scores depend on the corpus statistics and are recomputed).

    python -m benchmarks.studies.retraining                      # all four, ~50 min on 2 cores
    python -m benchmarks.studies.retraining --steps run1,cold    # some of them (rerun later steps after run1)
    python -m benchmarks.studies.retraining --table              # the recorded rows

Rows go to ``benchmarks/results/retraining.jsonl``; stage outputs stay under ``--root``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

from kadet.tools.datasets import find_scifact
from tests.doubles.data import write_beir

RESULTS = Path(__file__).resolve().parents[1] / "results" / "retraining.jsonl"
STEPS = ("run1", "cold", "warm", "scratch")
#: Each step: (work dir it starts from: None = fresh, else a step whose work dir is copied; --set overrides)
PLAN = {"run1": (None, []), "cold": ("run1", ["distill.init=base"]),
        "warm": ("run1", ["distill.init=champion", "distill.epochs=1"]), "scratch": (None, [])}


def grown_corpus(root: Path, fraction: float = 0.8, seed: int = 0) -> Path:
    """``root/docs``: SciFact's test split with the judged documents and ``fraction`` of the others;
    returns it, and keeps the full corpus file beside it as ``root/corpus-full.jsonl``."""
    src = find_scifact()
    docs = [json.loads(line) for line in (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [line.split("\t") for line in (src / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    judged = {d for _, d, _ in rows}
    others = [d for d in docs if d["_id"] not in judged]
    keep = {d["_id"] for d in random.Random(seed).sample(others, int(fraction * len(others)))} | judged
    queries = [json.loads(line) for line in (src / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    qids = {q for q, _, _ in rows}
    write_beir(root / "docs", [d for d in docs if d["_id"] in keep], [q for q in queries if q["_id"] in qids],
               [(q, d, int(s)) for q, d, s in rows])
    shutil.copy(src / "corpus.jsonl", root / "corpus-full.jsonl")
    return root / "docs"


def run_step(step: str, root: Path) -> dict:
    from kadet.kubeflow.local import run_local

    start_from, sets = PLAN[step]
    data = root / ("docs" if step == "run1" else "docs-full")
    work = root / f"work-{step}"
    shutil.rmtree(work, ignore_errors=True)
    if start_from is not None:
        shutil.copytree(root / f"work-{start_from}", work)
    if step == "warm":
        made_champion(work)
    t0 = time.perf_counter()
    summary = run_local(str(data), str(work), overrides=sets)
    seconds = time.perf_counter() - t0
    return {"step": step, "settings": sets, "seconds": round(seconds, 1), "work": summary.get("work"),
            "ndcg@10": summary["candidate"].get("ndcg@10"), "recall@100": summary["candidate"].get("recall@100"),
            "base_ndcg@10": summary["base"].get("ndcg@10"), "gain_ci": summary.get("gain_ci"),
            "version": summary.get("version"), "gate": summary.get("gate"),
            "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
            "time": time.strftime("%Y-%m-%d %H:%M")}


def made_champion(work: Path, model_name: str = "kadet-embedding") -> str:
    """Warm start needs a champion: when run 1's version was refused (its gain within noise),
    this copy of its work dir promotes it by hand, as a user may, and says so. Returns what it did."""
    import mlflow

    c = mlflow.MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    try:
        return f"champion v{c.get_model_version_by_alias(model_name, 'champion').version} (by the gate)"
    except mlflow.exceptions.MlflowException:
        latest = max(c.search_model_versions(f"name = '{model_name}'"), key=lambda v: int(v.version))
        c.set_registered_model_alias(model_name, "champion", latest.version)
        print(f"warm: run 1's version {latest.version} was not promoted; made champion by hand for this run")
        return f"champion v{latest.version} (set by hand)"


def table(rows: list[dict]) -> str:
    head = ("| run | wall min | teacher pairs new / reused | nDCG@10 | Recall@100 | base nDCG@10 |\n"
            "|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lab = (r.get("work") or {}).get("label") or {}
        lines.append(f"| {r['step']} {' '.join(r['settings'])} | {r['seconds'] / 60:.1f} | "
                     f"{lab.get('new', 0)} / {lab.get('reused', 0)} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | "
                     f"{r['base_ndcg@10']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="/tmp/kadet-retraining")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--table", action="store_true", help="print the recorded rows and stop")
    args = ap.parse_args(argv)
    if args.table:
        rows = [json.loads(x) for x in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
        print(table(rows))
        return 0
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "docs").exists():
        grown_corpus(root)
    if not (root / "docs-full").exists():
        shutil.copytree(root / "docs", root / "docs-full")
        shutil.copy(root / "corpus-full.jsonl", root / "docs-full" / "corpus.jsonl")
    rows = []
    for step in args.steps.split(","):
        row = run_step(step, root)
        rows.append(row)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(table([row]).splitlines()[-1], flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
