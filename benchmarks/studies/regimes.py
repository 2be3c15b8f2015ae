"""Adaptation in the regimes where it used to lose: small corpora, dense judgements, few training queries.

    python -m benchmarks.studies.regimes --slices scifact-300,scifact-1000,npl-1500,npl --recipes default
    python -m benchmarks.studies.regimes --table          # every recorded row

Each *slice* is a BEIR folder made here from data we may tune on (SciFact's **train** queries and
qrels, NPL), never from SciFact's test qrels. A slice keeps a set of judged queries and all their
relevant passages, plus seeded unjudged passages up to its size, so prepare's exclusion of every
evaluation-relevant passage (METHOD.md) removes most of the corpus and leaves few training
queries, the regime of the collections where adaptation lost (issue #20):

=============  ==========================================================================
scifact-300    300 passages: 150 SciFact train queries' positives, the rest unjudged
scifact-1000   1,000 passages: 500 SciFact train queries' positives, the rest unjudged
npl-1500       1,500 passages: NPL queries whose relevant passages fill ~1,000, the rest unjudged
npl            all of NPL (11,429 passages; 93 judged queries with ~22 relevant passages each)
scifact-train  all of SciFact (5,183 passages) judged by its 809 train queries (the many-queries regime)
=============  ==========================================================================

Each row runs kadet's own stages in-process on the local profile (``kadet/core/profiles/local.yaml``)
plus the recipe's overrides, and reports on the slice's judged queries: the base model, the
teacher reranking the base top-``label.rerank_depth`` (its *lead*), the candidate, the paired
bootstrap interval of candidate - base, and the fraction of the teacher's lead the student kept.
Rows go to ``benchmarks/results/regimes.jsonl`` with the machine they ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
from pathlib import Path

from kadet.kit.models import offline_env

offline_env()

from benchmarks.common import machine, timed  # noqa: E402
from kadet.tools.datasets import find_shared_data  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results" / "regimes.jsonl"

#: name -> (collection under shared/data, its qrels split, judged queries (None: all), passages (None: all))
SLICES: dict[str, tuple[str, str, int | None, int | None]] = {
    "scifact-300": ("beir/scifact", "train", 150, 300),
    "scifact-1000": ("beir/scifact", "train", 500, 1000),
    "npl-1500": ("npl", "test", 1000, 1500),
    "npl": ("npl", "test", None, None),
    "scifact-train": ("beir/scifact", "train", None, None),
}

#: recipe -> overrides on the local profile. ``default`` is whatever the profile says today.
RECIPES: dict[str, list[str]] = {
    "default": [],
    "lr3e-5": ["distill.lr=3e-5"],
    "lr1e-5": ["distill.lr=1e-5"],
    "e10": ["distill.epochs=10"],
    "wise0.5": ["distill.base_weight=0.5"],
    "warm16": ["distill.min_warmup_steps=16"],
    "warm16-e10": ["distill.min_warmup_steps=16", "distill.epochs=10"],
    "warm32-e10": ["distill.min_warmup_steps=32", "distill.epochs=10"],
    # three sentences of each passage instead of one (more training queries where passages are few)
    "sent3": ["generate.types={sentence: 3}"],
    "sent3-warm16-e10": ["generate.types={sentence: 3}", "distill.min_warmup_steps=16", "distill.epochs=10"],
    # transductive: the judged passages stay in training (their own synthetic queries too); the
    # evaluation then measures a corpus whose every passage was seen, as a user's production does.
    # kadet always excludes the evaluation split's passages, so this recipe trains on the slice's
    # corpus alone (no qrels: nothing to exclude) and evaluates on the slice. (The first two rows,
    # 2026-12-01, ran before label.silver_queries=0 was added: a fifth of their synthetic queries
    # was held out as an unused silver set.)
    "no-exclusion": ["label.silver_queries=0"],
    "full": ["distill.mode=full", "distill.passage_max_len=256", "distill.chunk_size=32", "distill.lr=2e-5"],
}


#: distill settings recorded with each row
SHOWN = ("lr", "epochs", "min_warmup_steps", "batch_size", "base_weight", "mode", "teacher_temp")


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_slice(name: str, root: Path, seed: int = 13) -> Path:
    """Write slice ``name`` as a BEIR folder under ``root`` (qrels/test.tsv = its judged queries)."""
    from tests.doubles.data import write_beir

    out = root / name
    if (out / "qrels" / "test.tsv").exists():
        return out
    coll, split, n_judged, n_passages = SLICES[name]
    src = find_shared_data() / coll
    docs = _read_jsonl(src / "corpus.jsonl")
    queries = {q["_id"]: q for q in _read_jsonl(src / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    for i, line in enumerate((src / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()):
        parts = line.split("\t")
        if i == 0 and not parts[-1].strip().lstrip("-").isdigit():
            continue
        if int(parts[2]) > 0:
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    ids = {d["_id"] for d in docs}
    rng = random.Random(seed)
    judged = sorted(q for q in qrels if q in queries and set(qrels[q]) <= ids)
    rng.shuffle(judged)
    keep_q, keep_d = [], set()
    for q in judged:
        if n_judged is not None and len(keep_d | set(qrels[q])) > (n_judged if coll == "npl" else 10**9):
            continue
        keep_q.append(q)
        keep_d |= set(qrels[q])
        if coll != "npl" and n_judged is not None and len(keep_q) >= n_judged:
            break
    others = sorted(ids - keep_d)
    rng.shuffle(others)
    if n_passages is not None:
        keep_d |= set(others[: max(0, n_passages - len(keep_d))])
    else:
        keep_d = ids
    write_beir(out, [d for d in docs if d["_id"] in keep_d], [queries[q] for q in keep_q],
               [(q, d, s) for q in keep_q for d, s in sorted(qrels[q].items())])
    return out


def _per_query(cfg, model: str | None) -> dict[str, float]:
    from kadet.kit.data import load_beir
    from kadet.stages.evaluate import scored_run

    ds = load_beir(cfg.data.data_dir, "test")
    qs = ds.eval_queries()
    _, pq = scored_run(cfg, ds, {q: v.text for q, v in qs.items()}, {q: ds.qrels[q] for q in qs}, "dense", model)
    return {q: m[cfg.evaluation.ndcg] for q, m in pq.items()}


def run(slice_name: str, recipe: str, root: Path, extra: list[str]) -> dict:
    from kadet.core.config import load_config, profile_config
    from kadet.stages.distill import distill
    from kadet.stages.evaluate import paired_bootstrap
    from kadet.stages.generate import generate
    from kadet.stages.label.stage import label
    from kadet.core.manifest import Manifest
    from kadet.stages.mine import mine
    from kadet.stages.preflight import teacher_lead
    from kadet.stages.prepare import prepare

    data = make_slice(slice_name, root / "data")
    work = root / "work" / slice_name
    overrides = RECIPES[recipe] + extra
    cfg = load_config(None, [f"data.data_dir={data}", f"work_dir={work}", *overrides], base=profile_config("local"))
    train_cfg = cfg   # what prepare..distill see
    if recipe == "no-exclusion":
        alone = root / "data" / f"{slice_name}-corpus-only"
        alone.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "corpus.jsonl", alone / "corpus.jsonl")
        train_cfg = load_config(None, [f"data.data_dir={alone}", f"work_dir={work}", *overrides],
                                base=profile_config("local"))
    t: dict[str, float] = {}

    # prepare..label do not depend on the distill-only recipes: one shared folder for those
    data_side = sorted(o for o in overrides if not o.startswith("distill.")) + (["corpus-only"] if train_cfg is not cfg
                                                                                  else [])
    key = hashlib.sha256(json.dumps(data_side).encode()).hexdigest()[:10]
    shared = work / ("shared" if not data_side else f"shared-{key}")   # named by what shapes the labels
    if not (shared / "label" / "labels.jsonl").exists():
        timed(t, "prepare", prepare, train_cfg, shared / "prepare")
        timed(t, "generate", generate, train_cfg, shared / "prepare" / "passages.jsonl", shared / "generate")
        timed(t, "mine", mine, train_cfg, shared / "generate" / "queries.jsonl", shared / "prepare" / "corpus.jsonl",
              shared / "mine")
        timed(t, "label", label, train_cfg, shared / "mine" / "candidates.jsonl", shared / "prepare" / "corpus.jsonl",
              shared / "label")
    prep = Manifest.read(shared / "prepare")
    lead = teacher_lead(cfg)
    out = work / "-".join([recipe, *[e.replace("=", "") for e in extra]])
    dm = timed(t, "distill", distill, train_cfg, shared / "label" / "labels.jsonl", out / "distill")
    base = _per_query(cfg, None)
    cand = _per_query(cfg, str(out / "distill" / "model"))
    gain = paired_bootstrap(base, cand)
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    return {
        "slice": slice_name, "recipe": recipe, "overrides": overrides,
        "passages": prep.counts.get("corpus"), "excluded": prep.counts.get("excluded_ids"),
        "trainable_passages": prep.counts.get("passages"),
        "train_queries": dm.counts["train_queries"], "judged_queries": len(base),
        "steps": len(json.loads((out / "distill" / "curves.json").read_text())["step"]),
        "epochs": dm.counts.get("epochs"), "base": round(mean(base), 4),
        "teacher": round(lead["teacher"], 4), "lead": round(lead["lead"], 4),
        "lead_ci": [round(lead["ci_low"], 4), round(lead["ci_high"], 4)],
        "candidate": round(mean(cand), 4), "gain": round(gain["mean"], 4),
        "gain_ci": [round(gain["ci_low"], 4), round(gain["ci_high"], 4)],
        "kept": round(gain["mean"] / lead["lead"], 2) if lead["lead"] > 0 else None,
        "seconds": t, "machine": machine(),
        # the effective settings (the profile's and the recipe's): the profile changes over time
        "settings": {k: getattr(cfg.distill, k) for k in SHOWN}
                    | {"generate.types": cfg.generate.types, "prepare.exclude_splits": cfg.prepare.exclude_splits},
    }


def table(rows: list[dict]) -> str:
    head = ("| slice | recipe | passages (excluded) | train q | judged q | base | teacher lead [95%] | candidate "
            "| gain [95%] | kept | distill s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['slice']} | {r['recipe']} {' '.join(r['overrides'])} | {r['passages']} ({r['excluded']}) "
            f"| {r['train_queries']} | {r['judged_queries']} | {r['base']:.4f} "
            f"| {r['lead']:+.4f} [{r['lead_ci'][0]:+.4f}, {r['lead_ci'][1]:+.4f}] | {r['candidate']:.4f} "
            f"| {r['gain']:+.4f} [{r['gain_ci'][0]:+.4f}, {r['gain_ci'][1]:+.4f}] | {r['kept']} "
            f"| {r['seconds'].get('distill', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", default=",".join(SLICES), help=f"comma-separated, of: {', '.join(SLICES)}")
    ap.add_argument("--recipes", default="default", help=f"comma-separated, of: {', '.join(RECIPES)}")
    ap.add_argument("--root", default=".kadet/regimes", help="slices and stage outputs")
    ap.add_argument("--set", action="append", default=[], help="extra override for every row")
    ap.add_argument("--table", action="store_true", help="print the recorded rows and exit")
    args = ap.parse_args()
    if args.table:
        print(table(_read_jsonl(RESULTS)) if RESULTS.exists() else "(no rows)")
        return
    for s in filter(None, args.slices.split(",")):
        for recipe in filter(None, args.recipes.split(",")):
            row = run(s, recipe, Path(args.root), args.set)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(table([row]), flush=True)


if __name__ == "__main__":
    main()
