"""Exported ONNX encoders vs the torch model: throughput and nDCG@10 parity on SciFact.

    python -m benchmarks.speed.export [--data ../shared/data/beir/scifact] [--model all-MiniLM-L6-v2] [--n 1000]

Exports ``--model`` with ``kadet export`` (a full model: one encoder), then
1. encodes ``--n`` queries and ``--n`` passages with torch (``SentenceTransformer.encode``, batch 32,
   CPU), onnxruntime fp32 (``model.onnx``) and onnxruntime int8 (``model_int8.onnx``): same batch
   size, same texts, same tokenizer settings, ``torch.set_num_threads(T)`` = the session's
   ``intra_op_num_threads`` (T = ``--threads``, default all cores). The ONNX side sorts texts by
   length before batching, as ``SentenceTransformer.encode`` does. Best of ``--repeats`` after a warm-up;
2. nDCG@10 / Recall@100 on SciFact's test queries (exact search over the whole corpus, top-100,
   trec_eval via ``kadet.stages.evaluate.per_query_metrics``) for each, with |diff| vs torch.
Target: |nDCG@10 diff| <= 0.005 for ONNX fp32 and int8.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from kadet.kit.models import offline_env

offline_env()

TARGET = 0.005


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class OrtEncoder:
    """onnxruntime + tokenizers, batched like SentenceTransformer.encode (length-sorted)."""

    def __init__(self, folder: Path, file: str, threads: int, batch_size: int):
        import json

        import onnxruntime as ort

        from kadet.tools.export import tokenizer_for

        self.config = json.loads((folder / "config.json").read_text())
        self.tok = tokenizer_for(folder, self.config)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self.sess = ort.InferenceSession(str(folder / file), opts, providers=["CPUExecutionProvider"])
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.config["dimension"]), dtype=np.float32)
        for i in range(0, len(texts), self.batch_size):
            idx = order[i:i + self.batch_size]
            enc = self.tok.encode_batch([self.config["prompt"] + texts[j] for j in idx])
            feed = {n: np.array([getattr(e, a) for e in enc], dtype=np.int64) for n, a in self.config["inputs"].items()}
            out[idx] = self.sess.run(["sentence_embedding"], feed)[0]
        return out


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def ndcg(encode, ds, qids: list[str]) -> dict[str, float]:
    from kadet.stages.evaluate import aggregate, drop_identical_ids, per_query_metrics

    doc_ids = list(ds.corpus)
    d = encode([ds.corpus[i].full_text() for i in doc_ids])
    q = encode([ds.queries[i].text for i in qids])
    scores = q @ d.T
    top = np.argsort(-scores, axis=1)[:, :100]
    run = {qid: {doc_ids[j]: float(scores[r, j]) for j in top[r]} for r, qid in enumerate(qids)}
    return aggregate(per_query_metrics({q_: ds.qrels[q_] for q_ in qids}, drop_identical_ids(run)))


def main() -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from kadet.tools.datasets import find_scifact
    from kadet.core.config import load_config
    from kadet.kit.data import load_beir
    from kadet.tools.export import export_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="BEIR folder (default: the shared SciFact)")
    ap.add_argument("--model", default="all-MiniLM-L6-v2", help="model to export (packaged name or folder)")
    ap.add_argument("--n", type=int, default=1000, help="queries and passages encoded for throughput")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="export folder (default: a temporary one)")
    ap.add_argument("--skip-ndcg", action="store_true")
    ap.add_argument("--skip-speed", action="store_true", help="only the nDCG parity table")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else find_scifact()
    ds = load_beir(data, "test")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="kadet-export-bench-")) / "export"
    t = time.perf_counter()
    r = export_model(load_config(None, [f"work_dir={out.parent / 'work'}"]), out, model=args.model, force=True)
    export_s = time.perf_counter() - t
    folder = out / "onnx" / "query"
    facts = r.info["onnx"]["query"]
    st = SentenceTransformer(str(out / "query"), device="cpu")
    encoders = {"torch (SentenceTransformer)": lambda x: st.encode(x, batch_size=args.batch_size)}
    encoders["onnxruntime fp32"] = OrtEncoder(folder, "model.onnx", args.threads, args.batch_size).encode
    if facts["int8"]["kept"]:
        encoders["onnxruntime int8"] = OrtEncoder(folder, "model_int8.onnx", args.threads, args.batch_size).encode

    # queries: the judged test queries first, then the others; passages: the first N of the corpus
    judged = [q for q in ds.queries if q in ds.qrels]
    qtexts = [ds.queries[q].text for q in judged + [q for q in ds.queries if q not in ds.qrels]][:args.n]
    ptexts = [d.full_text() for d in list(ds.corpus.values())[:args.n]]
    rows = []
    for name, enc in ([] if args.skip_speed else encoders.items()):
        tq, tp = best_time(lambda: enc(qtexts), args.repeats), best_time(lambda: enc(ptexts), args.repeats)
        rows.append([name, len(qtexts) / tq, len(ptexts) / tp])
    base_q, base_p = (rows[0][1], rows[0][2]) if rows else (1.0, 1.0)
    ref_q = encoders["torch (SentenceTransformer)"](qtexts[:200])
    print(f"\nkadet export: {args.model} -> {out} in {export_s:.0f} s ({facts['exporter']} exporter); "
          f"machine: {os.cpu_count()} cores, {cpu_model()}; threads {args.threads} (torch and ORT), batch {args.batch_size}")
    print(f"\n| encoder | queries/s | x torch | passages/s | x torch | max abs diff vs torch (200 queries) |")
    print("|---|---|---|---|---|---|")
    for (name, qps, pps), enc in zip(rows, encoders.values()):
        diff = float(np.abs(enc(qtexts[:200]) - ref_q).max())
        print(f"| {name} | {qps:.0f} | {qps / base_q:.2f} | {pps:.1f} | {pps / base_p:.2f} | {diff:.1e} |")
    if args.skip_ndcg:
        return
    qids = sorted(judged)
    print(f"\nSciFact test: {len(qids)} queries, {len(ds.corpus)} passages, exact search, top-100 (target |diff| <= {TARGET})")
    print("\n| encoder | nDCG@10 | diff vs torch | Recall@100 | diff vs torch | encode s |")
    print("|---|---|---|---|---|---|")
    ref = None
    for name, enc in encoders.items():
        t = time.perf_counter()
        m = ndcg(enc, ds, qids)
        s = time.perf_counter() - t
        ref = ref or m
        dn, dr = m["ndcg@10"] - ref["ndcg@10"], m["recall@100"] - ref["recall@100"]
        flag = "" if abs(dn) <= TARGET else " (over target)"
        print(f"| {name} | {m['ndcg@10']:.4f} | {dn:+.4f}{flag} | {m['recall@100']:.4f} | {dr:+.4f} | {s:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
