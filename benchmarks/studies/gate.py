"""Can the silver gate be trusted? Silver's verdict against gold's, on corpora whose judgements we withhold.

For each corpus (a slice of a judged collection kadet may be tuned on: SciFact *train*, NPL), kadet
runs its silver path on the corpus alone, as a user without judged queries would: prepare (nothing
excluded), one sentence per passage as the training query, mine, label (the label step holds out
silver queries by whole source passage). Then it trains a spread of candidates from the same labels,
good and bad on purpose (the local default, METHOD.md's teacher temperature 0.3, too many epochs at a
high learning rate, a tiny training set, an almost untrained model), and judges each one:

- **gold**: the collection's real judged queries (withheld from kadet), the gate kadet applies to
  judged queries (``kadet.registry.register.decide``, paired bootstrap at ``register.confidence``);
- **silver designs**, each the same gate on another silver set:
  ``teacher`` (today's: held-out synthetic queries, source passage + teacher score >= 0.9 relevant),
  ``source`` (the same queries, only the source passage relevant: no teacher in the judgement),
  ``question`` (questions the packaged LLM wrote for the held-out passages: another kind of query
  than the training sentences, source passage relevant), ``margin`` (teacher, interval above +0.01),
  ``all`` (teacher, source and question must all promote).

It prints, per design, how often silver's verdict (promote or not) equals gold's, how often the sign
of silver's gain equals gold's, and every wrong promotion (silver promotes, gold's gain is negative).
Target (issue "a gate that cannot be fooled"): no wrong promotion of a gold-significant loss, and >= 90%
agreement. Stage outputs are kept under ``--root`` (rerunning resumes); rows go to
``benchmarks/results/gate.jsonl``.

    python -m benchmarks.studies.gate                                   # all corpora and candidates (~40 min, 2 cores)
    python -m benchmarks.studies.gate --corpora scifact-small --candidates default,tiny-64
    python -m benchmarks.studies.gate --table                            # the recorded rows
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from benchmarks.common import machine
from kadet.kit.models import offline_env
from kadet.tools.datasets import find_shared_data
from tests.doubles.data import write_beir

REPO = Path(__file__).resolve().parents[2]

RESULTS = REPO / "benchmarks" / "results" / "gate.jsonl"

#: name -> (collection under shared/data, judged split used as gold, documents in the slice, judged queries)
CORPORA = {
    "scifact": ("beir/scifact", "train", 2500, 0),       # all 809 train queries, ~1 relevant doc each
    "scifact-small": ("beir/scifact", "train", 600, 150),  # few passages: a small training set
    "npl": ("npl", "test", 3000, 0),                      # dense judgements: ~22 relevant docs per query
}
#: name -> distill overrides on the local profile (the same labels for all)
CANDIDATES = {
    "default": [],
    "method-temp-0.3": ["distill.teacher_temp=0.3"],
    "overfit-lr3e-4-x6": ["distill.lr=3e-4", "distill.epochs=6", "distill.patience=6"],
    "tiny-64": ["distill.max_train_queries=64"],
    "gentle-lr1e-5-x1": ["distill.lr=1e-5", "distill.epochs=1"],
}
DESIGNS = ("teacher", "source", "question", "margin", "all")
MARGIN = 0.01


def make_slice(name: str, root: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(gold folder, corpus-only folder)``: the judged queries of the split with their relevant
    documents plus random others up to the slice size; the corpus-only folder is what kadet sees."""
    src_rel, split, n_docs, n_queries = CORPORA[name]
    gold, bare = root / name / "gold", root / name / "corpus-only"
    if (bare / "corpus.jsonl").exists() and (gold / "qrels" / "test.tsv").exists():
        return gold, bare
    data = find_shared_data()
    if data is None:
        raise SystemExit("shared data not found: set KADET_SHARED_DATA")
    src = data / src_rel
    docs = {d["_id"]: d for d in map(json.loads, (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines())}
    queries = {q["_id"]: q for q in map(json.loads, (src / "queries.jsonl").read_text(encoding="utf-8").splitlines())}
    rows = [r.split("\t") for r in (src / "qrels" / f"{split}.tsv").read_text().splitlines()[1:] if r.strip()]
    qids = list(dict.fromkeys(q for q, _, s in rows if int(s) > 0 and q in queries))
    if n_queries:
        qids = qids[:n_queries]
    qrels = [(q, d, int(s)) for q, d, s in rows if q in set(qids) and d in docs]
    keep = list(dict.fromkeys(d for _, d, _ in qrels))
    others = sorted(set(docs) - set(keep))
    keep += random.Random(seed).sample(others, max(0, n_docs - len(keep)))
    write_beir(gold, [docs[d] for d in keep], [queries[q] for q in qids], qrels)
    bare.mkdir(parents=True, exist_ok=True)
    (bare / "corpus.jsonl").write_bytes((gold / "corpus.jsonl").read_bytes())
    return gold, bare


def config(root: Path, bare: Path, extra: list[str]):
    from kadet.core.config import load_config, profile_config

    return load_config(None, [f"data.data_dir={bare}", f"work_dir={root}", *extra], base=profile_config("local"))


def silver_path(name: str, root: Path, bare: Path, sample_size: int, timings: dict) -> Path:
    """prepare -> sentence queries -> mine -> label on the corpus alone; returns the label folder."""
    from kadet.kit.data import read_corpus
    from kadet.stages.generate import extract_queries
    from kadet.core.io import write_jsonl
    from kadet.stages.label.stage import label
    from kadet.stages.mine import mine
    from kadet.stages.prepare import prepare

    out = root / name
    cfg = config(root, bare, [f"prepare.sample_size={sample_size}"])
    if (out / "label" / "labels.jsonl").exists():
        return out / "label"
    steps = [("prepare", lambda: prepare(cfg, out / "prepare")),
             ("generate", lambda: write_jsonl(out / "generate" / "queries.jsonl", extract_queries(
                 list(read_corpus(out / "prepare" / "passages.jsonl").values()), "sentence", cfg.seed))),
             ("mine", lambda: mine(cfg, out / "generate" / "queries.jsonl", out / "prepare" / "corpus.jsonl",
                                   out / "mine")),
             ("label", lambda: label(cfg, out / "mine" / "candidates.jsonl", out / "prepare" / "corpus.jsonl",
                                     out / "label"))]
    for stage, fn in steps:
        t0 = time.perf_counter()
        fn()
        timings[stage] = round(time.perf_counter() - t0, 1)
    return out / "label"


def silver_rows(labels: Path) -> list[dict]:
    from kadet.kit.data import read_records

    return [r for r in read_records(labels / "labels.jsonl", "qid", {"query": str, "source_doc_id": str})
            if r.get("split") == "silver"]


def question_set(name: str, root: Path, bare: Path, silver: list[dict], n: int) -> list[dict]:
    """Questions by the packaged LLM for up to ``n`` held-out silver source passages (never trained on)."""
    from kadet.kit.data import read_corpus, read_records
    from kadet.stages.generate import generate
    from kadet.core.io import write_jsonl

    out = root / name / "question"
    queries = out / "generate" / "queries.jsonl"
    if not queries.exists():
        corpus = read_corpus(root / name / "prepare" / "corpus.jsonl")
        sources = list(dict.fromkeys(r["source_doc_id"] for r in silver))[:n]
        write_jsonl(out / "passages.jsonl", (corpus[d].to_json() for d in sources))
        cfg = config(root, bare, ["generate.types={question: 1.0}", "generate.temperature=0.0"])
        generate(cfg, out / "passages.jsonl", out / "generate")
    return read_records(queries, "qid", {"text": str, "source_doc_id": str})


def settings_key(cfg) -> str:
    """A digest of the candidate's effective distill settings (the local profile's, plus its own)."""
    import hashlib

    from kadet.stages.distill.checkpoint import hyperparameters

    return hashlib.sha256(json.dumps(hyperparameters(cfg.distill), sort_keys=True, default=str).encode()).hexdigest()[:8]


def candidate_dir(root: Path, name: str, cand: str) -> Path:
    """Where candidate ``cand`` of corpus ``name`` is trained (its model in ``model/``): named by its
    effective distill settings, so a recipe change trains it anew (judged_gate.py reads it too)."""
    return root / name / "candidates" / f"{cand}-{settings_key(config(root, root / name / 'corpus-only', CANDIDATES[cand]))}"


def train(name: str, cand: str, root: Path, bare: Path, labels: Path, timings: dict) -> Path:
    from kadet.stages.distill import distill

    cfg = config(root, bare, CANDIDATES[cand])
    out = candidate_dir(root, name, cand)
    if not (out / "model" / "modules.json").exists():
        t0 = time.perf_counter()
        distill(cfg, labels / "labels.jsonl", out)
        timings[f"distill:{cand}"] = round(time.perf_counter() - t0, 1)
    return out / "model"


def per_query(cfg, ds, sets: dict, model: str) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """nDCG@10 per query and mean Recall@100 of ``model`` on each evaluation set ``{name: (texts, qrels)}``,
    one retrieval per set."""
    from kadet.stages.evaluate import aggregate, scored_run

    e = cfg.evaluation
    runs = {s: scored_run(cfg, ds, texts, qrels, "dense", model)[1] for s, (texts, qrels) in sets.items()}
    return ({s: {q: m[e.ndcg] for q, m in pq.items()} for s, pq in runs.items()},
            {s: aggregate(pq)[e.recall] for s, pq in runs.items()})


def verdict(cfg, base: dict, cand: dict, base_recall: float, cand_recall: float, margin: float = 0.0) -> dict:
    """kadet's gate on one evaluation set (candidate vs base model, nothing registered)."""
    import dataclasses

    from kadet.stages.evaluate import paired_bootstrap
    from kadet.registry.register import decide

    e = cfg.evaluation
    gain = paired_bootstrap(base, cand, confidence=cfg.register.confidence, seed=cfg.seed)
    mean = lambda d: sum(d.values()) / max(1, len(d))   # noqa: E731
    gate = dataclasses.replace(cfg.register, silver_promotes=True)
    d = decide({e.ndcg: mean(cand), e.recall: cand_recall}, {e.ndcg: mean(base), e.recall: base_recall}, gate,
               "base model", gain, e)
    promote = d.promote and gain["ci_low"] > margin
    return {"promote": promote, "mean": round(gain["mean"], 4), "ci": [round(gain["ci_low"], 4),
            round(gain["ci_high"], 4)], "queries": gain["queries"],
            "significant_loss": gain["ci_high"] < 0}


def run_corpus(name: str, root: Path, cands: list[str], sample_size: int, n_questions: int) -> list[dict]:
    from kadet.kit.data import load_beir

    timings: dict[str, float] = {}
    gold_dir, bare = make_slice(name, root)
    labels = silver_path(name, root, bare, sample_size, timings)
    silver = silver_rows(labels)
    t0 = time.perf_counter()
    questions = question_set(name, root, bare, silver, n_questions)
    timings["question"] = round(time.perf_counter() - t0, 1)
    cfg = config(root, bare, [])
    ds = load_beir(gold_dir, "test")
    gold_q = {q: v.text for q, v in ds.eval_queries().items()}
    sets = {
        "gold": (gold_q, {q: ds.qrels[q] for q in gold_q}),
        "teacher": ({r["qid"]: r["query"] for r in silver},
                    {r["qid"]: {d: int(g) for d, g in (r.get("silver_qrels") or {r["source_doc_id"]: 2}).items()}
                     for r in silver}),
        "source": ({r["qid"]: r["query"] for r in silver}, {r["qid"]: {r["source_doc_id"]: 1} for r in silver}),
        "question": ({r["qid"]: r["text"] for r in questions}, {r["qid"]: {r["source_doc_id"]: 1} for r in questions}),
    }
    base_model = cfg.retrieval.model
    base, base_rc = per_query(cfg, ds, sets, base_model)
    train_rows = sum(1 for r in map(json.loads, (labels / "labels.jsonl").read_text().splitlines())
                     if r.get("split") == "train")
    rows = []
    for cand in cands:
        model = str(train(name, cand, root, bare, labels, timings))
        pq, rc = per_query(cfg, ds, sets, model)
        v = {s: verdict(cfg, base[s], pq[s], base_rc[s], rc[s]) for s in sets}
        v["margin"] = verdict(cfg, base["teacher"], pq["teacher"], base_rc["teacher"], rc["teacher"], margin=MARGIN)
        v["all"] = {"promote": all(v[s]["promote"] for s in ("teacher", "source", "question")),
                    "mean": v["teacher"]["mean"]}
        row = {"corpus": name, "candidate": cand, "documents": len(ds.corpus), "gold_queries": len(gold_q),
               "train_queries": train_rows, "silver_queries": len(silver), "question_queries": len(questions),
               "base_gold_ndcg": round(sum(base["gold"].values()) / len(base["gold"]), 4),
               "verdicts": v, "seconds": dict(timings), "machine": machine(),
               "settings": {"key": candidate_dir(root, name, cand).name.rsplit("-", 1)[1], "overrides": CANDIDATES[cand],
                            "profile": "local"}}
        rows.append(row)
        print(json.dumps({"corpus": name, "candidate": cand, **{s: (v[s]["promote"], v[s]["mean"]) for s in v}}),
              flush=True)
    return rows


def gold_word(v: dict) -> str:
    return "gain" if v["promote"] else "loss" if v["significant_loss"] else "noise"


def table(rows: list[dict]) -> str:
    """The per-candidate table, then per design: agreement with gold, direction, wrong promotions."""
    head = ("| corpus | candidate | train q | gold nDCG@10 gain [90% CI] | gold | "
            + " | ".join(f"{d}" for d in DESIGNS) + " |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        v = r["verdicts"]
        g = v["gold"]
        cells = []
        for d in DESIGNS:
            mark = "promote" if v[d]["promote"] else "refuse"
            wrong = v[d]["promote"] and g["mean"] < 0
            cells.append(f"{'**WRONG** ' if wrong else ''}{mark} ({v[d]['mean']:+.3f})")
        out.append(f"| {r['corpus']} | {r['candidate']} | {r['train_queries']} | {g['mean']:+.4f} "
                   f"[{g['ci'][0]:+.4f}, {g['ci'][1]:+.4f}] | {gold_word(g)} | " + " | ".join(cells) + " |")
    out += ["", "| silver design | verdict = gold's | gain sign = gold's | wrong promotions (gold gain < 0) "
                "| of which gold-significant losses |", "|---|---|---|---|---|"]
    n = len(rows)
    for d in DESIGNS:
        agree = sum(r["verdicts"][d]["promote"] == r["verdicts"]["gold"]["promote"] for r in rows)
        sign = sum((r["verdicts"][d]["mean"] > 0) == (r["verdicts"]["gold"]["mean"] > 0) for r in rows)
        wrong = [f"{r['corpus']}/{r['candidate']}" for r in rows
                 if r["verdicts"][d]["promote"] and r["verdicts"]["gold"]["mean"] < 0]
        sig = [w for w, r in zip(wrong, [r for r in rows if r["verdicts"][d]["promote"]
                                          and r["verdicts"]["gold"]["mean"] < 0]) if r["verdicts"]["gold"]["significant_loss"]]
        out.append(f"| {d} | {agree}/{n} ({agree / max(1, n):.0%}) | {sign}/{n} ({sign / max(1, n):.0%}) | "
                   f"{', '.join(wrong) or 'none'} | {', '.join(sig) or 'none'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=",".join(CORPORA), help=f"comma-separated, of: {', '.join(CORPORA)}")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help=f"comma-separated, of: {', '.join(CANDIDATES)}")
    ap.add_argument("--root", default=".kadet/gate", help="work dir (stage outputs, shared embedding cache)")
    ap.add_argument("--sample-size", type=int, default=1500, help="passages with a training query (prepare)")
    ap.add_argument("--questions", type=int, default=120, help="LLM questions for the 'question' silver set")
    ap.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    args = ap.parse_args()
    offline_env(tokenizer_threads=True)
    if args.table:
        rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
        latest = {(r["corpus"], r["candidate"]): r for r in rows}   # a rerun replaces its row
        print(table(list(latest.values())))
        return
    rows = []
    for name in filter(None, args.corpora.split(",")):
        new = run_corpus(name, Path(args.root), [c for c in args.candidates.split(",") if c], args.sample_size,
                         args.questions)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as f:
            for r in new:
                f.write(json.dumps(r) + "\n")
        rows += new
    print(table(rows))


if __name__ == "__main__":
    main()
