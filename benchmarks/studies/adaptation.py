"""Adaptation recipes end to end on SciFact: which training data and settings move nDCG@10.

    python -m benchmarks.studies.adaptation --recipes sentence-q,llm-200 [--root .kadet/adapt]
    python -m benchmarks.studies.adaptation --table            # print every recorded row

Each recipe runs prepare -> queries -> mine -> label -> distill -> evaluate in-process with
kadet's own stage functions and prints one row: queries by source and count, labelled (train),
optimizer steps, seconds per stage on this machine, and nDCG@10 / Recall@100 of the dense model
on SciFact's 809 *train* queries (``dev``: the set recipes are chosen on) and on the 300 *test*
queries (reported, never used to choose). For the dev figures to be clean, every recipe except
``gold-*`` excludes the passages judged relevant to train **and** test queries from training
(``prepare.exclude_splits=[test, train]``). ``base_weight`` rows (WiSE-FT interpolation with
the base model) reuse the same trained weights, so they cost only evaluation.

Rows are appended to ``benchmarks/results/adaptation.jsonl`` with the machine they ran on.
Query sources:

``llm``       kadet's generate stage (packaged SmolLM2, the types of the recipe)
``sentence``  one sentence of each passage (kadet's ``sentence`` query type)
``gold``      SciFact's human train queries, source = a judged positive (reference only: users
              have no such queries; the dev figures are then not clean and shown as "-")
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kadet.kit.models import offline_env

offline_env()

from benchmarks.common import machine, timed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "adaptation.jsonl"
QUERY_SIDE = ["distill.mode=query", "distill.batch_size=64", "distill.progress=false", "generate.progress=false"]

# name -> (query source, overrides, base weights to evaluate)
RECIPES: dict[str, tuple[str, list[str], list[float]]] = {
    "llm-200": ("llm", ["prepare.sample_size=200", "generate.types={question: 1, claim: 1, msmarco: 1}",
                        "label.ensemble={dense: 1.0, bm25: 0.5, ql: 0.0}", "label.rerank_depth=30",
                        "distill.epochs=3", "distill.lr=1e-5", *QUERY_SIDE], [0.0]),
    "sentence-ict": ("sentence", ["prepare.sample_size=100000", "label.ensemble={dense: 1.0, bm25: 0.5, ql: 0.0}",
                                  "label.rerank_depth=30", "distill.epochs=3", "distill.lr=1e-5", *QUERY_SIDE],
                     [0.0, 0.5]),
    "sentence-full": ("sentence", ["prepare.sample_size=100000", "label.ensemble={dense: 1.0, bm25: 0.5, ql: 0.0}",
                                   "label.rerank_depth=30", "distill.mode=full", "distill.list_size=8",
                                   "distill.passage_max_len=128", "distill.batch_size=32", "distill.chunk_size=32",
                                   "distill.max_train_queries=1500", "distill.epochs=1", "distill.lr=2e-5",
                                   "distill.progress=false"], [0.0, 0.5]),
    "llm-1200": ("llm", ["prepare.sample_size=1200", "generate.types={question: 0.34, claim: 0.33, msmarco: 0.33}",
                         "label.ensemble={dense: 1.0, bm25: 0.5, ql: 0.0}", "label.rerank_depth=30",
                         "distill.epochs=3", "distill.lr=1e-5", *QUERY_SIDE], [0.0, 0.3, 0.5]),
    "llm-1200-lr3e-5": ("labels:llm-1200", ["distill.epochs=3", "distill.lr=3e-5", *QUERY_SIDE], [0.0, 0.3, 0.5]),
    "llm-1200-st0.1": ("labels:llm-1200", ["distill.student_temp=0.1", "distill.epochs=3", "distill.lr=1e-5", *QUERY_SIDE],
                       [0.0, 0.5]),
    "llm-1200-tt0.1": ("labels:llm-1200", ["distill.teacher_temp=0.1", "distill.epochs=3", "distill.lr=1e-5", *QUERY_SIDE],
                       [0.0, 0.5]),
    "llm-1200-tt0.05": ("labels:llm-1200", ["distill.teacher_temp=0.05", "distill.epochs=3", "distill.lr=1e-5",
                                            *QUERY_SIDE], [0.0, 0.5]),
    "llm-1200-tt0.1-lr3e-5": ("labels:llm-1200", ["distill.teacher_temp=0.1", "distill.epochs=3", "distill.lr=3e-5",
                                                  *QUERY_SIDE], [0.0, 0.5]),
    "llm-1200-tt0.1-lr1e-4": ("labels:llm-1200", ["distill.teacher_temp=0.1", "distill.epochs=3", "distill.lr=1e-4",
                                                  *QUERY_SIDE], [0.0, 0.5]),
    "sentence-tt0.1-lr3e-5": ("labels:sentence-ict", ["distill.teacher_temp=0.1", "distill.epochs=3", "distill.lr=3e-5",
                                                      *QUERY_SIDE], [0.0, 0.5]),
    "llm-1200-auto-lr3e-5": ("labels:llm-1200", ["distill.auto_teacher_temp=true", "distill.epochs=3",
                                                 "distill.lr=3e-5", *QUERY_SIDE], [0.0, 0.5]),
    "sentence-tt0.1-lr1e-4": ("labels:sentence-ict", ["distill.teacher_temp=0.1", "distill.epochs=3", "distill.lr=1e-4",
                                                      *QUERY_SIDE], [0.0, 0.5]),
    # labels of llm-1200 and sentence-ict concatenated (same prepare exclusions, same teacher)
    "mix-tt0.1-lr1e-4": ("labels:mix-llm1200-sentence", ["distill.teacher_temp=0.1", "distill.epochs=3",
                                                         "distill.lr=1e-4", *QUERY_SIDE], [0.0, 0.5]),
    "sentence-tt0.1-lr2e-4": ("labels:sentence-ict", ["distill.teacher_temp=0.1", "distill.epochs=3", "distill.lr=2e-4",
                                                      *QUERY_SIDE], [0.0, 0.3]),
    # the chosen recipe (local profile) against InfoNCE alone, on the same labels
    "sentence-infonce-lr1e-4": ("labels:sentence-ict", ["distill.loss=infonce", "distill.epochs=3", "distill.lr=1e-4",
                                                        *QUERY_SIDE], [0.0]),
    # query side vs full tuning on the same 320 training queries (lists of 8, passages cut to 128 tokens)
    "sentence-sub320-query": ("labels:sentence-ict", ["distill.teacher_temp=0.1", "distill.max_train_queries=320",
                                                      "distill.list_size=8", "distill.epochs=1", "distill.lr=1e-4",
                                                      *QUERY_SIDE, "distill.batch_size=32"], [0.0]),
    "sentence-sub320-full": ("labels:sentence-ict", ["distill.teacher_temp=0.1", "distill.max_train_queries=320",
                                                     "distill.list_size=8", "distill.epochs=1", "distill.lr=2e-5",
                                                     "distill.batch_size=32", "distill.chunk_size=32",
                                                     "distill.passage_max_len=128", "distill.mode=full",
                                                     "distill.progress=false"], [0.0]),
    # the curve: the chosen recipe on the first N training queries
    "sentence-first1000": ("labels:sentence-ict", ["distill.teacher_temp=0.1", "distill.max_train_queries=1000",
                                                   "distill.epochs=3", "distill.lr=1e-4", *QUERY_SIDE], [0.0]),
    "sentence-first2000": ("labels:sentence-ict", ["distill.teacher_temp=0.1", "distill.max_train_queries=2000",
                                                   "distill.epochs=3", "distill.lr=1e-4", *QUERY_SIDE], [0.0]),
    "llm-1200-e6": ("labels:llm-1200", ["distill.epochs=6", "distill.lr=1e-5", *QUERY_SIDE], [0.0, 0.5]),
    "llm-1200-infonce": ("labels:llm-1200", ["distill.loss=infonce", "distill.epochs=3", "distill.lr=1e-5",
                                             *QUERY_SIDE], [0.0, 0.5]),
    "llm-1200-full-sub": ("labels:llm-1200", ["distill.mode=full", "distill.list_size=8", "distill.passage_max_len=128",
                                              "distill.batch_size=16", "distill.chunk_size=32",
                                              "distill.max_train_queries=160", "distill.epochs=1", "distill.lr=2e-5",
                                              "distill.progress=false"], [0.0, 0.5]),
    "gold-infonce": ("gold", ["label.ensemble={dense: 1.0, bm25: 0.5, ql: 0.0}", "label.rerank_depth=30",
                              "distill.loss=infonce", "distill.epochs=3", "distill.lr=1e-5", *QUERY_SIDE], [0.0]),
    "gold-listwise": ("labels:gold-infonce", ["distill.epochs=3", "distill.lr=1e-5", *QUERY_SIDE], [0.0]),
}


def sentence_queries(passages_path: Path, seed: int) -> list[dict]:
    from kadet.kit.data import read_corpus
    from kadet.stages.generate import extract_queries

    return extract_queries(list(read_corpus(passages_path).values()), "sentence", seed)


def gold_queries(data: Path) -> list[dict]:
    from kadet.kit.data import load_beir

    ds = load_beir(data, "train")
    out = []
    for qid, q in ds.eval_queries().items():
        pos = sorted(d for d, s in ds.qrels.get(qid, {}).items() if s > 0 and d in ds.corpus)
        if pos:
            out.append({"qid": f"gold-{qid}", "text": q.text, "type": "gold", "source_doc_id": pos[0]})
    return out


def scores(cfg, data: Path, model: str) -> dict:
    from kadet.kit.data import load_beir
    from kadet.stages.evaluate import aggregate, scored_run

    out = {}
    for split in ("train", "test"):
        ds = load_beir(data, split)
        qs = ds.eval_queries()
        qrels = {q: ds.qrels[q] for q in qs}
        _, pq = scored_run(cfg, ds, {q: v.text for q, v in qs.items()}, qrels, "dense", model)
        agg = aggregate(pq)
        out[split] = {"ndcg@10": round(agg["ndcg@10"], 4), "recall@100": round(agg["recall@100"], 4)}
    return out


def run_recipe(name: str, root: Path, data: Path, extra: list[str]) -> list[dict]:
    from kadet.core.config import load_config
    from kadet.stages.generate import generate
    from kadet.core.io import write_jsonl
    from kadet.stages.label.stage import label
    from kadet.stages.mine import mine
    from kadet.stages.prepare import prepare

    source, overrides, weights = RECIPES[name]
    excl = "prepare.exclude_splits=[test]" if source == "gold" else "prepare.exclude_splits=[test, train]"
    cfg = load_config(None, [f"data.data_dir={data}", f"work_dir={root}", excl, *overrides, *extra])
    out = root / name
    t: dict[str, float] = {}

    if source.startswith("labels:"):  # a training variant on another recipe's labels
        out = root / source.split(":", 1)[1]
        return train_and_score(name, source, overrides + extra, weights, cfg, out, root / name, data, {}, None)
    timed(t, "prepare", prepare, cfg, out / "prepare")
    if source == "llm":
        timed(t, "generate", generate, cfg, out / "prepare" / "passages.jsonl", out / "generate")
    else:
        qs = timed(t, "generate", sentence_queries if source == "sentence" else gold_queries,
                   *((out / "prepare" / "passages.jsonl", cfg.seed) if source == "sentence" else (data,)))
        write_jsonl(out / "generate" / "queries.jsonl", qs)
    mm = timed(t, "mine", mine, cfg, out / "generate" / "queries.jsonl", out / "prepare" / "corpus.jsonl", out / "mine")
    timed(t, "label", label, cfg, out / "mine" / "candidates.jsonl", out / "prepare" / "corpus.jsonl", out / "label")
    return train_and_score(name, source, overrides + extra, weights, cfg, out, out, data, t, mm)


def train_and_score(name, source, overrides, weights, cfg, labels_dir: Path, out: Path, data: Path,
                    t: dict, mm) -> list[dict]:
    from kadet.stages.distill import Distiller, interpolated, save_query_side_model

    t0 = time.perf_counter()
    trainer = Distiller(cfg, labels_dir / "label" / "labels.jsonl", out / "distill")
    trainer.train()
    t["distill"] = round(time.perf_counter() - t0, 1)
    rows = []
    for w in weights:
        model_dir = out / f"model-w{w}"
        model = interpolated(trainer.model, trainer.base_path, w) if w else trainer.model
        if cfg.distill.mode == "query":
            save_query_side_model(model, trainer.base_path, model_dir, cfg.distill.query_max_len)
        else:
            model.save(str(model_dir))
        t0 = time.perf_counter()
        sc = scores(cfg, data, str(model_dir))
        rows.append({
            "recipe": name, "source": source, "base_weight": w, "overrides": overrides,
            "queries": mm.counts.get("queries") if mm else "(same)", "kept_mine": mm.counts.get("kept") if mm else "",
            "labelled_train": len(trainer.train_rows), "steps": trainer.state["step"],
            "teacher_temp": round(trainer.teacher_temp, 4),
            "seconds": {**t, "evaluate": round(time.perf_counter() - t0, 1)},
            "dev": sc["train"] if source != "gold" else None, "test": sc["test"], "machine": machine(),
        })
    return rows


def base_row(root: Path, data: Path) -> dict:
    from kadet.core.config import load_config

    cfg = load_config(None, [f"data.data_dir={data}", f"work_dir={root}"])
    sc = scores(cfg, data, cfg.retrieval.model)
    return {"recipe": "base", "source": "-", "base_weight": 1.0, "overrides": [], "queries": 0, "kept_mine": 0,
            "labelled_train": 0, "steps": 0, "seconds": {}, "dev": sc["train"], "test": sc["test"],
            "machine": machine()}


def table(rows: list[dict]) -> str:
    stages = ["prepare", "generate", "mine", "label", "distill", "evaluate"]
    head = (f"| recipe | source | queries | labelled | steps | base w | {' | '.join(stages)} s "
            f"| dev nDCG@10 | dev R@100 | test nDCG@10 | test R@100 |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        sec = " | ".join(str(r["seconds"].get(s, "")) for s in stages)
        dev = r["dev"] or {}
        lines.append(f"| {r['recipe']} | {r['source']} | {r['queries']} | {r['labelled_train']} | {r['steps']} "
                     f"| {r['base_weight']} | {sec} | {dev.get('ndcg@10', '-')} | {dev.get('recall@100', '-')} "
                     f"| {r['test']['ndcg@10']} | {r['test']['recall@100']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="", help=f"comma-separated, of: base, {', '.join(RECIPES)}")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "beir" / "scifact"))
    ap.add_argument("--root", default=".kadet/adapt", help="work dir (stage outputs, shared embedding cache)")
    ap.add_argument("--set", action="append", default=[], help="extra override for every recipe")
    ap.add_argument("--tag", default="", help="suffix for the recipe name in the results")
    ap.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    args = ap.parse_args()
    root, data = Path(args.root), Path(args.data)
    for name in filter(None, args.recipes.split(",")):
        rows = [base_row(root, data)] if name == "base" else run_recipe(name, root, data, args.set)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            for r in rows:
                if args.tag:
                    r["recipe"] += args.tag
                f.write(json.dumps(r) + "\n")
        print(table(rows), flush=True)
    if args.table and RESULTS.exists():
        print(table([json.loads(l) for l in RESULTS.read_text().splitlines() if l.strip()]))


if __name__ == "__main__":
    main()
