"""Distillation throughput and memory: kadet's trainer (full vs query-side, several GradCache
chunk sizes) and sentence-transformers' own trainer with ``DistillKLDivLoss``, same data.

    python -m benchmarks.speed.distill --queries 64 --list-size 20

The labels: the first ``--queries`` SciFact *train* queries, each with its BM25 top-L passages
and min-max normalised BM25 scores as teacher scores (the quality of the teacher is irrelevant
to speed and memory). Every configuration trains one epoch of the same queries from the packaged
all-MiniLM-L6-v2 in its own subprocess, so its peak RSS (``ru_maxrss``) is its own; samples/s =
training queries (each with L passages) per second of training, model loading excluded.

- ``kadet full cN``: full fine-tuning, GradCache chunks of N texts, ``--batch`` queries per step.
- ``kadet query c64``: query-side tuning (frozen document tower, passages encoded once).
- ``kadet full c32 xN``: the same full fine-tuning data-parallel under ``torchrun
  --nproc_per_node N`` (gloo on CPU; ``kadet.stages.distill.parallel``): each process encodes 1/N of every batch
  with 1 thread, so on a CPU box it shares the same cores as the one-process row (which uses all
  of them); seconds = the slowest rank, peak RSS = the largest rank's.
- ``ST DistillKLDiv bN``: ``SentenceTransformerTrainer`` + ``DistillKLDivLoss`` (cosine,
  student temperature 0.05, teacher temperature 0.3, as kadet's KL term), N queries per step
  and no GradCache: all N x (1 + L) texts in one forward.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kadet.kit.models import offline_env

offline_env()

REPO = Path(__file__).resolve().parents[2]


def build_labels(path: Path, n_queries: int, list_size: int) -> None:
    from kadet.core.config import load_config
    from kadet.kit.data import load_beir
    from kadet.core.io import write_jsonl
    from kadet.kit.search import BM25Retriever, ranked
    from kadet.tools.datasets import find_scifact

    ds = load_beir(find_scifact(), "train")
    queries = dict(list(ds.eval_queries().items())[:n_queries])
    run = BM25Retriever.from_config(ds.corpus, load_config()).search({q: v.text for q, v in queries.items()}, list_size)
    rows = []
    for i, (qid, q) in enumerate(queries.items()):
        docs = ranked(run[qid])[:list_size]
        s = [run[qid][d] for d in docs]
        lo, hi = min(s), max(s)
        rows.append({"qid": qid, "query": q.text, "type": "human", "source_doc_id": docs[0],
                     "split": "dev" if i % 10 == 9 else "train",
                     "passages": [{"doc_id": d, "text": ds.corpus[d].full_text(), "score": (x - lo) / ((hi - lo) or 1)}
                                  for d, x in zip(docs, s)]})
    write_jsonl(path, rows)


def worker_kadet(labels: Path, mode: str, chunk: int, batch: int, max_len: int) -> dict:
    from kadet.core.config import load_config
    from kadet.stages.distill import Distiller

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"work_dir={tmp}", f"distill.mode={mode}", f"distill.chunk_size={chunk}",
                                 f"distill.batch_size={batch}", "distill.epochs=1", f"distill.passage_max_len={max_len}",
                                 "distill.progress=false", "distill.lr=1e-5"])
        trainer = Distiller(cfg, labels, Path(tmp) / "out")
        t0 = time.perf_counter()
        trainer.train(1)
        return {"seconds": time.perf_counter() - t0, "queries": len(trainer.train_rows)}


def worker_st(labels: Path, batch: int, max_len: int) -> dict:
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
    from sentence_transformers.util import pairwise_cos_sim

    from kadet.kit.data import read_records
    from kadet.kit.models import resolve_model_path

    rows = [r for r in read_records(labels, "qid", {"query": str, "passages": list}) if r["split"] == "train"]
    size = min(len(r["passages"]) for r in rows)
    data = {"query": [r["query"] for r in rows]}
    for i in range(size):
        data[f"passage_{i}"] = [r["passages"][i]["text"] for r in rows]
    data["label"] = [[p["score"] for p in r["passages"][:size]] for r in rows]
    model = SentenceTransformer(str(resolve_model_path("all-MiniLM-L6-v2")), device="cpu", local_files_only=True)
    model.max_seq_length = max_len
    loss = DistillKLDivLoss(model, similarity_fct=pairwise_cos_sim, student_temperature=0.05, teacher_temperature=0.3)
    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp, per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=1e-5,
            report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=42)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(data), loss=loss)
        t0 = time.perf_counter()
        trainer.train()
        return {"seconds": time.perf_counter() - t0, "queries": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--list-size", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32, help="queries per optimizer step")
    ap.add_argument("--chunks", default="8,32,128", help="GradCache chunk sizes for full fine-tuning")
    ap.add_argument("--st-batches", default="8,32")
    ap.add_argument("--processes", default="2", help="data-parallel rows (torchrun), full c32; '' for none")
    ap.add_argument("--no-query-row", dest="query_row", action="store_false", help="skip the query-side row")
    ap.add_argument("--max-len", type=int, default=256, help="passage max tokens (all configurations)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--labels", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        kind, _, rest = args.worker.partition(":")
        if kind == "st":
            res = worker_st(Path(args.labels), int(rest), args.max_len)
        else:
            mode, chunk = rest.split(",")
            res = worker_kadet(Path(args.labels), mode, int(chunk), args.batch, args.max_len)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return

    tmp = Path(tempfile.mkdtemp(prefix="kadet-distill-bench-"))
    labels = tmp / "labels.jsonl"
    build_labels(labels, args.queries, args.list_size)
    configs = [(f"kadet full c{c}", f"kadet:full,{c}") for c in args.chunks.split(",") if c]
    if args.query_row:
        configs.append(("kadet query c64", "kadet:query,64"))
    configs += [(f"kadet full c32 x{n}", f"torchrun{n}:full,32") for n in args.processes.split(",") if n]
    configs += [(f"ST DistillKLDiv b{b}", f"st:{b}") for b in args.st_batches.split(",") if b]
    rows = []
    for name, spec in configs:
        launch = [sys.executable]
        if spec.startswith("torchrun"):
            n, spec = spec[len("torchrun"):].split(":", 1)
            spec = "kadet:" + spec
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
        # this module again, as a module (python -m / torchrun -m) from the repository root
        cmd = [*launch, "-m", "benchmarks.speed.distill", "--worker", spec, "--labels", str(labels),
               "--batch", str(args.batch), "--max-len", str(args.max_len)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        results = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not results:
            why = (f"killed by signal {-proc.returncode}" + (" (out of memory?)" if proc.returncode == -9 else "")
                   if proc.returncode < 0 else f"exit {proc.returncode}")
            rows.append((name, {"failed": why}))
            print(f"{name}: {why}\n{proc.stderr[-1500:]}", file=sys.stderr)
            continue
        rows.append((name, {"seconds": max(r["seconds"] for r in results), "queries": results[0]["queries"],
                            "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}))
        print(f"  done: {name}", file=sys.stderr)
    print(f"\n{args.queries} SciFact train queries (BM25 top-{args.list_size}, ~90% train), passages <= {args.max_len} "
          f"tokens, all-MiniLM-L6-v2, 1 epoch, kadet batch {args.batch} queries/step; {os.cpu_count()} CPUs, "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')} threads")
    print(f"{'configuration':<22} {'seconds':>8} {'samples/s':>10} {'peak RSS MB':>12}")
    for name, r in rows:
        if "failed" in r:
            print(f"{name:<22} failed: {r['failed']}")
            continue
        print(f"{name:<22} {r['seconds']:8.1f} {r['queries'] / r['seconds']:10.2f} {r['peak_rss_mb']:12.0f}")


if __name__ == "__main__":
    main()
