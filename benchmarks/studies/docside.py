"""Cheap document-side tuning on a CPU: does it capture more of the teacher's lead than the query side?

    python -m benchmarks.studies.regimes --slices scifact-train --recipes default     # makes the labels
    python -m benchmarks.studies.docside                                              # reads them

Query-side tuning (the local profile) keeps the base model's document embeddings; full tuning
re-encodes passages on every step, which a 2-core machine cannot afford (docs/adaptation.md).
Between the two lie document-side parts that are cheap to train because the base model's
document states can be computed once: each arm below is trained on kadet's own labels
(listwise KL, teacher temperature 0.1, student 0.05, as distill does) with the **query tower
fixed** at the base model, so it measures what the document side alone adds (or, with
``--query-model``, at a query-side model trained on the same labels: what it adds to that):

==========  ===================================================================================
weights     a learned weight per vocabulary token in the mean pooling (``WordWeights`` + mean
            ``Pooling``, both stock sentence-transformers modules), on cached token states
linear      a 384 x 384 map of the document embedding (initialised to the identity)
mlp         a residual MLP on the document embedding (initialised to add nothing)
==========  ===================================================================================

Each is stopped at its best dev loss (the labels' dev split) and evaluated on the *whole*
corpus: SciFact's **train** queries (the dev signal: the labels of ``regimes.py``'s scifact-train
slice exclude their relevant passages) and its test queries (reported only). Rows go to
``benchmarks/results/docside.jsonl`` with the machine; ``--table`` prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from kadet.kit.models import offline_env

offline_env()

from benchmarks.common import REPO, machine  # noqa: E402
from kadet.tools.datasets import find_scifact  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "docside.jsonl"
ARMS = {"weights": 0.01, "linear": 3e-4, "mlp": 1e-3}   # Adam(W) learning rates, the best of 2-3 tried


def token_states(model, texts: list[str]):
    """Padded last-layer token states (float16), input ids and attention masks of ``texts``."""
    import torch

    n, length, dim = len(texts), model.max_seq_length, model.get_embedding_dimension()
    states = torch.zeros(n, length, dim, dtype=torch.float16)
    ids = torch.zeros(n, length, dtype=torch.long)
    mask = torch.zeros(n, length)
    order = sorted(range(n), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for b in range(0, n, 32):
            rows = order[b:b + 32]
            features = model.tokenize([texts[i] for i in rows])
            width = features["input_ids"].shape[1]
            states[rows, :width] = model[0](dict(features))["token_embeddings"].half()
            ids[rows, :width] = features["input_ids"]
            mask[rows, :width] = features["attention_mask"].float()
    return states, ids, mask


def make_arm(kind: str, states, ids, mask, vocab: int):
    """``(module, embed)``: the trainable part and ``embed(rows)``, the normalised document
    embeddings of corpus rows through it."""
    import torch
    from torch.nn.functional import gelu, normalize

    if kind == "weights":
        log_w = torch.nn.Parameter(torch.zeros(vocab))      # weight exp(0) = 1: plain mean pooling
        module = torch.nn.ParameterList([log_w])

        def embed(rows):
            w = torch.exp(log_w)[ids[rows]] * mask[rows]
            pooled = torch.einsum("nl,nld->nd", w, states[rows].float()) / w.sum(1, keepdim=True).clamp_min(1e-9)
            return normalize(pooled, dim=-1)
        return module, embed
    m, dim = mask[..., None], states.shape[-1]
    mean = normalize((states.float() * m).sum(1) / m.sum(1), dim=-1)   # the base model's embeddings
    if kind == "linear":
        module = torch.nn.Linear(dim, dim, bias=False)
        torch.nn.init.eye_(module.weight)
        return module, lambda rows: normalize(module(mean[rows]), dim=-1)
    up, down = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, dim)
    torch.nn.init.zeros_(down.weight)
    torch.nn.init.zeros_(down.bias)
    module = torch.nn.Sequential(up, down)
    return module, lambda rows: normalize(mean[rows] + down(gelu(up(mean[rows]))), dim=-1)


def kl(embed, q, docs, target):
    """distill's listwise term: KL(teacher at 0.1 || student at 0.05) over each labelled list."""
    import torch

    unique, inverse = torch.unique(docs, return_inverse=True)
    student = torch.einsum("bd,bkd->bk", q, embed(unique)[inverse]) / 0.05
    t = torch.softmax(target / 0.1, -1)
    return torch.sum(t * (torch.log(t + 1e-12) - torch.log_softmax(student, -1)), -1).mean()


def train(module, embed, splits: dict, lr: float, weight_decay: float) -> tuple[float, float, int]:
    """AdamW, batches of 64, up to 10 epochs, stopped at the first that does not lower the dev
    KL; ``module`` is left at its best. Returns the dev KL at the start and at the best epoch,
    and that epoch (0: the start was best)."""
    import torch

    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    q, docs, target = splits["train"]
    with torch.no_grad():
        start = float(kl(embed, *splits["dev"]))
    best = (start, {k: v.clone() for k, v in module.state_dict().items()}, 0)
    for epoch in range(1, 11):
        perm = torch.randperm(len(q))
        for b in range(0, len(q), 64):
            j = perm[b:b + 64]
            loss = kl(embed, q[j], docs[j], target[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            dev = float(kl(embed, *splits["dev"]))
        if dev >= best[0]:
            break
        best = (dev, {k: v.clone() for k, v in module.state_dict().items()}, epoch)
    module.load_state_dict(best[1])
    return start, best[0], best[2]


def run(labels: Path, data: Path, query_model: Path | None = None) -> list[dict]:
    import torch
    from sentence_transformers import SentenceTransformer

    from kadet.kit.data import load_beir
    from kadet.stages.evaluate import aggregate, paired_bootstrap, per_query_metrics
    from kadet.kit.models import resolve_model_path

    torch.manual_seed(0)
    model = SentenceTransformer(str(resolve_model_path("all-MiniLM-L6-v2")), device="cpu", local_files_only=True)
    corpus = load_beir(data, "test").corpus
    doc_ids = sorted(corpus)
    row_of = {d: i for i, d in enumerate(doc_ids)}
    t0 = time.perf_counter()
    states, ids, mask = token_states(model, [corpus[d].full_text() for d in doc_ids])
    states_s = time.perf_counter() - t0

    queries = SentenceTransformer(str(query_model), device="cpu", local_files_only=True) if query_model else model

    def encode(texts):
        return torch.tensor(queries.encode_query(texts, batch_size=128, normalize_embeddings=True))

    rows = [json.loads(line) for line in labels.open()]
    splits = {}
    for split in ("train", "dev"):
        part = [r for r in rows if r["split"] == split]
        splits[split] = (encode([r["query"] for r in part]),
                         torch.tensor([[row_of[p["doc_id"]] for p in r["passages"]] for r in part]),
                         torch.tensor([[p["score"] for p in r["passages"]] for r in part]))

    evals = {}
    for split in ("train", "test"):
        ds = load_beir(data, split)
        qids = sorted(q for q in ds.qrels if q in ds.queries)
        evals[split] = (ds.qrels, qids, encode([ds.queries[q].text for q in qids]))

    def scores(embed) -> dict:
        with torch.no_grad():
            docs = torch.cat([embed(torch.arange(i, min(i + 512, len(doc_ids)))) for i in range(0, len(doc_ids), 512)])
        out = {}
        for split, (qrels, qids, q) in evals.items():
            top = torch.topk(q @ docs.T, 100, dim=1)
            run_ = {qid: {doc_ids[j]: float(s) for j, s in zip(top.indices[i].tolist(), top.values[i].tolist())}
                    for i, qid in enumerate(qids)}
            out[split] = per_query_metrics(qrels, run_)
        return out

    base = scores(make_arm("weights", states, ids, mask, model.tokenizer.vocab_size)[1])   # untrained = base
    out = []
    for kind, lr in ARMS.items():
        module, embed = make_arm(kind, states, ids, mask, model.tokenizer.vocab_size)
        t0 = time.perf_counter()
        start_loss, best_loss, epochs = train(module, embed, splits, lr, weight_decay=0.0 if kind == "weights" else 0.01)
        got = scores(embed)
        row = {"arm": kind, "lr": lr, "epochs": epochs, "dev_loss": [round(start_loss, 4), round(best_loss, 4)],
               "train_s": round(time.perf_counter() - t0, 1), "states_s": round(states_s, 1),
               "labels": str(labels), "query_model": str(query_model or "base"), "machine": machine()}
        for split, per_query in got.items():
            nd = {qid: m["ndcg@10"] for qid, m in per_query.items()}
            b = paired_bootstrap({qid: m["ndcg@10"] for qid, m in base[split].items()}, nd)
            row[split] = {"base": round(aggregate(base[split])["ndcg@10"], 4),
                          "ndcg@10": round(aggregate(per_query)["ndcg@10"], 4),
                          "recall@100": round(aggregate(per_query)["recall@100"], 4),
                          "gain": round(b["mean"], 4), "ci": [round(b["ci_low"], 4), round(b["ci_high"], 4)]}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    lines = ["| query tower | arm | lr | epochs | dev KL (start -> best) | SciFact train nDCG@10 (dev) [95%] | test nDCG@10 [95%] "
             "| test R@100 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tr, te = r["train"], r["test"]
        tower = "base" if r.get("query_model", "base") == "base" else "query-side model"
        lines.append(f"| {tower} | {r['arm']} | {r['lr']:g} | {r['epochs']} | {r['dev_loss'][0]} -> {r['dev_loss'][1]} "
                     f"| {tr['base']} -> {tr['ndcg@10']} ({tr['gain']:+.4f} [{tr['ci'][0]:+.4f}, {tr['ci'][1]:+.4f}]) "
                     f"| {te['base']} -> {te['ndcg@10']} ({te['gain']:+.4f} [{te['ci'][0]:+.4f}, {te['ci'][1]:+.4f}]) "
                     f"| {te['recall@100']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=Path, default=REPO / ".kadet/regimes/work/scifact-train/shared/label/labels.jsonl",
                    help="labels.jsonl of a kadet run on SciFact whose exclusion covered the train queries")
    ap.add_argument("--query-model", type=Path, help="fix the query tower at this model (e.g. a query-side "
                    "distill output trained on the same labels) instead of the base model: does the document "
                    "side add to the query side?")
    ap.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(line) for line in RESULTS.open()]))
        return
    if not args.labels.exists():
        sys.exit(f"docside: {args.labels} does not exist; run benchmarks/studies/regimes.py --slices scifact-train first")
    rows = run(args.labels, find_scifact(), args.query_model)
    with RESULTS.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
