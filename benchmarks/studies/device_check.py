"""Full tuning at the method's batch size on a GPU, from a bundle, in one call::

    python -m benchmarks.studies.device_check --bundle device-bundle --out "$OUT"

Runs on a bare GPU image (torch, transformers, sentence-transformers, numpy; no kfp, mlflow, bm25s
or pytrec_eval) with only the checkout and the bundle :mod:`benchmarks.studies.device_bundle`
packs (``scripts/device-bundle.sh``). In order, each part timed (wall seconds, GPU peak memory):

``unpack``      the bundle into ``--work``: the BEIR folder, labels.jsonl with its texts back,
                the student cast from float16 to a float32 folder (the base)
``base``        nDCG@10 / Recall@100 of the base on the test judgements (the corpus encoded)
``query-side``  distill.mode=query on the same labels and device, then its metrics (the corpus
                embeddings are the base's, from the embedding cache: not re-encoded)
``full``        distill.mode=full, then its metrics (the corpus re-encoded by the tuned model)

Training is kadet's own: the :class:`~kadet.stages.distill.Distiller` (its GradCache step,
listwise KL + InfoNCE loss, AdamW and schedule) with the ``gpu`` profile's distill settings
(``kadet/core/profiles/gpu.yaml``: 4,096-query steps in chunks of 256, bf16 autocast, lr 2e-4,
warm-up half an epoch and at least 16 steps, teacher temperature 0.1, up to 30 epochs, patience 2).
The schedule is the profile's whole run; ``--train-seconds`` only stops it early, between epochs,
when the next epoch would not fit (the table says how many epochs ran and why it stopped).
``--set`` adds overrides on top of the profile (the CPU test shrinks batch, chunk and lengths).

The metrics are trec_eval's nDCG@10 (``ndcg_cut.10``, linear gains) and Recall@100 computed
here in numpy (pytrec_eval is not on the device image); tests/system/test_device_check.py checks
that they equal kadet's evaluate stage (pytrec_eval) on a slice. Writes ``device_check.md`` (the
table) and ``device_check.json`` (rows, settings, the folders of the three models) to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import time
from pathlib import Path

from kadet.kit.models import offline_env

offline_env()

import numpy as np  # noqa: E402
import torch  # noqa: E402

PARTS = ("unpack", "base", "query-side", "full")


# ---------------------------------------------------------------------------------------- metrics
def ndcg_recall(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], ndcg_k: int = 10,
                recall_k: int = 100) -> dict[str, dict[str, float]]:
    """trec_eval's ``ndcg_cut.<ndcg_k>`` and ``recall.<recall_k>`` per judged query, in numpy: the run
    ranked by score (ties: doc id descending, as trec_eval), gain = the judgement, discount
    log2(rank + 1), the ideal from every judged document; relevant = judgement > 0; a query with no
    retrieved document scores 0."""
    out = {}
    for q, rels in qrels.items():
        if not rels:
            continue
        ranked = sorted(run.get(q, {}).items(), key=lambda kv: (-kv[1], _desc(kv[0])))
        gains = np.array([rels.get(d, 0) for d, _ in ranked], dtype=np.float64)
        ideal = np.sort(np.array([g for g in rels.values() if g > 0], dtype=np.float64))[::-1]
        disc = 1.0 / np.log2(np.arange(2, max(len(gains), len(ideal), ndcg_k) + 2))
        idcg = float((ideal[:ndcg_k] * disc[: min(ndcg_k, len(ideal))]).sum())
        dcg = float((gains[:ndcg_k] * disc[: min(ndcg_k, len(gains))]).sum())
        relevant = sum(g > 0 for g in rels.values())
        found = int((gains[:recall_k] > 0).sum())
        out[q] = {f"ndcg@{ndcg_k}": dcg / idcg if idcg > 0 else 0.0,
                  f"recall@{recall_k}": found / relevant if relevant else 0.0}
    return out


class _desc(str):
    """A doc id that sorts in reverse (trec_eval breaks score ties by descending doc id)."""

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)


def mean(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    names = next(iter(per_query.values())).keys()
    return {n: float(np.mean([m[n] for m in per_query.values()])) for n in names}


# ---------------------------------------------------------------------------------------- unpack
def unpack(bundle: Path, work: Path) -> tuple[Path, Path, Path, dict]:
    """The bundle as kadet reads it: ``(BEIR folder, labels.jsonl, float32 base model, bundle.json)``."""
    from sentence_transformers import SentenceTransformer

    from kadet.kit.data import read_corpus

    info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    data = work / "data"
    (data / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus", "queries"):
        with gzip.open(bundle / "data" / f"{name}.jsonl.gz", "rb") as f, open(data / f"{name}.jsonl", "wb") as g:
            shutil.copyfileobj(f, g)
    shutil.copy(bundle / "data" / "qrels" / "test.tsv", data / "qrels" / "test.tsv")
    corpus = read_corpus(data / "corpus.jsonl", [])
    sep = info.get("title_separator", " ")
    labels = work / "labels.jsonl"
    with gzip.open(bundle / "labels.jsonl.gz", "rt", encoding="utf-8") as src, open(labels, "w", encoding="utf-8") as dst:
        for line in src:
            row = json.loads(line)
            row["passages"] = [{"doc_id": p[0], "score": p[1],
                                "text": p[2] if len(p) > 2 else corpus[p[0]].full_text(sep)} for p in row["passages"]]
            dst.write(json.dumps(row, ensure_ascii=False) + "\n")
    base = work / "base"
    st = SentenceTransformer(str(bundle / "model"), device="cpu", local_files_only=True)
    st.float().save(str(base), safe_serialization=True)
    return data, labels, base, info


# ---------------------------------------------------------------------------------------- parts
def config(data: Path, work: Path, base: Path, mode: str, overrides: list[str]):
    """The gpu profile with this run's folders, the base model, ``mode`` and ``overrides``."""
    from kadet.core.config import load_config, profile_config

    sets = [f"data.data_dir={data}", f"work_dir={work}", f"retrieval.model={base}", "distill.init=base",
            f"distill.mode={mode}", *overrides]
    return load_config(None, sets, base=profile_config("gpu"))


def evaluate(cfg, model: Path) -> tuple[dict[str, float], dict]:
    """Mean nDCG@10 / Recall@100 of ``model`` (dense, exact search) on the test judgements, and per query."""
    from kadet.kit.data import load_beir
    from kadet.stages.evaluate import drop_identical_ids, retrieve

    ds = load_beir(cfg.data.data_dir, "test")
    queries = {q: v.text for q, v in ds.eval_queries().items()}
    run = retrieve(cfg, ds, queries, "dense", str(model))
    if cfg.evaluation.ignore_identical_ids:
        run = drop_identical_ids(run)
    pq = ndcg_recall({q: ds.qrels[q] for q in queries}, run, cfg.evaluation.ndcg_k, cfg.evaluation.recall_k)
    return mean(pq), pq


def train(cfg, labels: Path, out: Path, budget_s: float) -> dict:
    """kadet's Distiller, epoch by epoch, until the profile's run ends (epochs, early stopping) or the
    next epoch would pass ``budget_s``; its best model by dev loss is ``out/model``."""
    from kadet.stages.distill import Distiller

    t0 = time.perf_counter()
    trainer = Distiller(cfg, labels, out)
    s, epoch_s, stop = cfg.distill, [], "the profile's end"
    while True:
        st = trainer.state
        if st["epoch"] >= s.epochs:
            stop = f"all {s.epochs} epochs"
            break
        if st["bad_epochs"] >= s.patience:
            stop = f"early stopping (patience {s.patience})"
            break
        if epoch_s and time.perf_counter() - t0 + max(epoch_s) > budget_s:
            stop = f"time budget {budget_s:.0f} s"
            break
        e0 = time.perf_counter()
        trainer.train(max_epochs_this_run=1)
        epoch_s.append(time.perf_counter() - e0)
    st = trainer.state
    return {"train_queries": len(trainer.train_rows), "dev_queries": len(trainer.dev_rows),
            "steps": st["step"], "steps_per_epoch": trainer.steps_per_epoch, "epochs": st["epoch"],
            "best_epoch": st["best_epoch"], "best_dev_loss": st["best_dev"], "stopped": stop,
            "seconds_per_epoch": round(float(np.mean(epoch_s)), 1) if epoch_s else None,
            "train_s": round(time.perf_counter() - t0, 1)}


class Meter:
    """Wall seconds and GPU peak memory of each part."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = round(time.perf_counter() - self.t0, 1)
        self.peak_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.cuda else None


# ---------------------------------------------------------------------------------------- table
def table(result: dict) -> str:
    d = result["device"]
    lines = [f"device check: {d['name']} (torch {d['torch']}, CUDA {d['cuda']}), GPU peak memory over the run "
             f"{d['peak_gib']} GiB; bundle {result['bundle']['model']} fp16, {result['bundle']['documents']} documents, "
             f"{result['bundle']['test_queries']} test queries",
             f"distill: {result['settings']}", "",
             "| part | seconds | GPU peak GiB | nDCG@10 | Recall@100 | train q | steps (per epoch) | epochs (best) "
             "| stopped | train s | s/epoch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        t = r.get("training") or {}
        metric = lambda k: f"{r['metrics'][k]:.4f}" if r.get("metrics") else ""  # noqa: E731
        steps = f"{t['steps']} ({t['steps_per_epoch']})" if t else ""
        epochs = f"{t['epochs']} ({t['best_epoch']})" if t else ""
        lines.append(
            f"| {r['part']} | {r['seconds']} | {r['peak_gib'] if r['peak_gib'] is not None else '-'} "
            f"| {metric('ndcg@10')} | {metric('recall@100')} | {t.get('train_queries', '')} "
            f"| {steps} | {epochs} | {t.get('stopped', '')} "
            f"| {t.get('train_s', '')} | {t.get('seconds_per_epoch', '') or ''} |")
    lines.append(f"\ntotal {result['total_s']} s")
    return "\n".join(lines)


def device_facts() -> dict:
    if torch.cuda.is_available():
        return {"name": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
                "peak_gib": None}
    return {"name": f"cpu ({os.cpu_count()} cores)", "torch": torch.__version__, "cuda": None, "peak_gib": None}


def run(bundle: Path, work: Path, overrides: list[str], train_s: dict[str, float]) -> dict:
    t0 = time.perf_counter()
    rows, models = [], {}
    with Meter() as m:
        data, labels, base, info = unpack(bundle, work)
    rows.append({"part": "unpack", "seconds": m.seconds, "peak_gib": m.peak_gib})
    cfg = config(data, work, base, "full", overrides)
    with Meter() as m:
        metrics, _ = evaluate(cfg, base)
    rows.append({"part": "base", "seconds": m.seconds, "peak_gib": m.peak_gib, "metrics": metrics})
    models["base"] = str(base)
    for part, mode in (("query-side", "query"), ("full", "full")):
        cfg = config(data, work, base, mode, overrides)
        with Meter() as m:
            facts = train(cfg, labels, work / part, train_s[part])
            e0 = time.perf_counter()
            metrics, _ = evaluate(cfg, work / part / "model")
            facts["eval_s"] = round(time.perf_counter() - e0, 1)
        rows.append({"part": part, "seconds": m.seconds, "peak_gib": m.peak_gib, "metrics": metrics,
                     "training": facts})
        models[part] = str(work / part / "model")
    dev = device_facts()
    if torch.cuda.is_available():
        dev["peak_gib"] = max(r["peak_gib"] for r in rows)
    s = cfg.distill
    settings = (f"batch {s.batch_size}, chunk {s.chunk_size}, list {s.list_size}, bf16 {s.bf16}, lr {s.lr}, "
                f"warm-up {s.warmup_epochs} epoch >= {s.min_warmup_steps} steps, epochs {s.epochs}, patience "
                f"{s.patience}, teacher_temp {s.teacher_temp}, passage_max_len {s.passage_max_len}"
                + (f"; --set {' '.join(overrides)}" if overrides else ""))
    return {"rows": rows, "device": dev, "bundle": info, "settings": settings, "overrides": overrides,
            "models": models, "total_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=Path("device-bundle"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".kadet/device-check")))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a fresh one under /tmp)")
    ap.add_argument("--set", action="append", default=[], help="override on the gpu profile (the CPU test's slice)")
    ap.add_argument("--train-seconds", type=float, default=300.0, help="stop full training between epochs past this")
    ap.add_argument("--query-train-seconds", type=float, default=90.0, help="the same for query-side training")
    args = ap.parse_args(argv)
    if args.work is None:
        import tempfile

        args.work = Path(tempfile.mkdtemp(prefix="kadet-device-check-"))
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.bundle, args.work, args.set, {"query-side": args.query_train_seconds, "full": args.train_seconds})
    text = table(result)
    (args.out / "device_check.md").write_text(text + "\n", encoding="utf-8")
    (args.out / "device_check.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(text, flush=True)


if __name__ == "__main__":
    main()
