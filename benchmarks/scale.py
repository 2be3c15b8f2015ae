"""Every stage at 10k, 100k and 1M passages: wall time per passage and peak memory, each stage alone.

    python benchmarks/scale.py                          # 10,000, 100,000 and 1,000,000 passages
    python -m benchmarks.scale --sizes 10000,100000     # the smaller sizes (under 15 minutes on 2 cores)

kadet's real stage code on a synthetic corpus per size: passage lengths drawn lognormal around
SciFact's (mean 1,499 characters; log-mean 7.25, log-sd 0.36), sentences of Zipf-distributed
pseudo-words (BM25 sees a real-looking vocabulary), 1% exact duplicates. The encoder is a tiny
random-weight BERT (2 layers, 32 dimensions, 64 tokens; ``tests.doubles.data.make_tiny_st``), so that
encoding (measured with the real models in ``benchmarks/speed/encode.py``) does not hide the
rest. The settings are the ``local`` profile's: 5,000 sampled passages, so at most 5,000
sentence queries reach mine and label at every size (the query count is capped, the corpus grows).

=============  ==================================================================================
fingerprint    the pipeline's fingerprint task: the corpus fingerprint (SHA-256 of the file) and
               the inputs fingerprint
prepare        read, clean, dedupe, exclude, sample, keep the document digests, write
generate       sentence queries of the sampled passages (no LLM)
mine           dense (tiny model, embedding cache) + BM25 over the clean corpus, RRF, top 100
label          the local profile's teacher (ensemble: dense 1 + BM25 0.5), its scores kept in
               the store, filters
evaluate       the comparison of two models (base, and a query-side candidate whose document
               embeddings are the base's, as ``distill.mode=query`` leaves them), dense + BM25 +
               hybrid, 300 queries over the full corpus
rerun x2       two more scheduled runs, each over the corpus grown by 1%: fingerprint, prepare,
               the corpus through the embedding cache (new passages only), label (pairs reused)
=============  ==================================================================================

Each stage runs in a fresh Python process: its peak RSS (``VmHWM``) is its own, and ``base`` is
that process's RSS after importing torch, sentence-transformers and kadet, before the stage. Per
passage = the stage's wall seconds / the corpus size (for every stage: all of them read the whole
corpus); the CPU columns use the process's user + system seconds instead, which another user's
load on a shared machine moves less (the last line's ratio is wall time's, as the issue asks). The ratio compares each row with the same stage at the smallest size: 1.0 is linear. The
sizes on disk of the embedding cache and the store are taken after the three runs. Rows go to
``benchmarks/results/scale.jsonl`` (``--label`` names them, e.g. ``before`` a change).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):   # run as a file (python benchmarks/scale.py): the repository on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "scale.jsonl"
STAGES = ("fingerprint", "prepare", "generate", "mine", "label", "evaluate", "rerun x2")
EVAL_QUERIES = 300
GROWTH = 0.01          # each later scheduled run sees the corpus grown by this fraction


# ----------------------------------------------------------------------------- synthetic corpus

def _vocabulary(rng: random.Random, size: int = 30_000) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = set()
    while len(words) < size:
        words.add("".join(rng.choices(letters, k=rng.randint(3, 11))))
    return sorted(words)


def _sentences(rng: random.Random, vocab: list[str], n: int = 100_000) -> list[str]:
    cum = list(itertools.accumulate(1.0 / (r + 1) ** 1.07 for r in range(len(vocab))))   # Zipf
    out = []
    for _ in range(n):
        words = rng.choices(vocab, cum_weights=cum, k=rng.randint(6, 28))
        out.append(" ".join(words).capitalize() + ".")
    return out


def write_corpus(path: Path, n: int, start: int = 0, seed: int = 0) -> None:
    """``n`` passages ``d<start>`` ... as BEIR ``corpus.jsonl`` lines, appended to ``path``."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    pool = _sentences(rng, vocab)
    rng = random.Random(seed * 1_000_003 + start)
    previous = None
    with open(path, "a", encoding="utf-8") as fh:
        for i in range(start, start + n):
            if previous is not None and i % 100 == 99:          # 1% exact duplicates
                title, text = previous
            else:
                target = min(10_000, max(200, int(rng.lognormvariate(7.247, 0.364))))
                title = pool[rng.randrange(len(pool))][:-1]
                parts, length = [], len(title)
                while length < target:
                    s = pool[rng.randrange(len(pool))]
                    parts.append(s)
                    length += len(s) + 1
                text = " ".join(parts)
            previous = (title, text)
            fh.write(json.dumps({"_id": f"d{i}", "title": title, "text": text}) + "\n")


# ----------------------------------------------------------------------------- one stage, in a child

def _config(work: Path, data: Path, model: Path):
    from kadet.core.config import load_config, profile_config

    return load_config(None, [f"data.data_dir={data}", f"work_dir={work / 'work'}", f"retrieval.model={model}"],
                       base=profile_config("local"))


def _eval_folder(work: Path) -> Path:
    """A BEIR folder over the whole corpus: 300 of the generated queries, each judged relevant to
    its source passage."""
    from kadet.kit.data import read_records

    beir = work / "beir"
    if not (beir / "qrels" / "test.tsv").exists():
        (beir / "qrels").mkdir(parents=True, exist_ok=True)
        if not (beir / "corpus.jsonl").exists():
            (beir / "corpus.jsonl").symlink_to(work / "corpus.jsonl")
        rows = read_records(work / "gen" / "queries.jsonl", "qid", {"text": str, "source_doc_id": str})
        rows = random.Random(1).sample(rows, min(EVAL_QUERIES, len(rows)))
        with open(beir / "queries.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps({"_id": "e" + r["qid"], "text": r["text"]}) + "\n")
        with open(beir / "qrels" / "test.tsv", "w", encoding="utf-8") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            fh.writelines(f"e{r['qid']}\t{r['source_doc_id']}\t1\n" for r in rows)
    return beir


def run_stage(stage: str, work: Path, model: Path) -> dict:
    """Run ``stage`` on the prepared folder ``work``; returns what it reports."""
    from kadet.stages.prepare import fingerprints, prepare

    corpus = work / "corpus.jsonl"
    cfg = _config(work, corpus, model)
    counts: dict = {}
    if stage == "fingerprint":
        fingerprints(cfg)
    elif stage == "prepare":
        m = prepare(cfg, work / "prep")
        counts = {"clean": m.counts["clean_corpus"], "passages": m.counts["passages"]}
    elif stage == "generate":
        from kadet.stages.generate import generate

        counts = {"queries": generate(cfg, work / "prep" / "passages.jsonl", work / "gen").counts["kept"]}
    elif stage == "mine":
        from kadet.stages.mine import mine

        m = mine(cfg, work / "gen" / "queries.jsonl", work / "prep" / "corpus.jsonl", work / "mine")
        from kadet.kit.search import describe_index

        counts = {"queries": m.counts["queries"], "kept": m.counts["kept"], **m.extra.get("search", {}),
                  **{f"index {k}": describe_index(v) for k, v in m.extra.get("dense_index", {}).items()}}
    elif stage == "label":
        from kadet.stages.label.stage import label

        m = label(cfg, work / "mine" / "candidates.jsonl", work / "prep" / "corpus.jsonl", work / "label")
        counts = {"labelled": m.counts.get("kept", 0), "pairs_scored": m.counts.get("pairs_scored", 0)}
    elif stage == "evaluate":
        from kadet.kit.data import load_beir
        from kadet.stages.evaluate import aggregate, compare_retrievers

        ds = load_beir(_eval_folder(work), "test")
        texts = {q: v.text for q, v in ds.eval_queries().items()}
        qrels = {q: ds.qrels[q] for q in texts}
        # the candidate: a copy of the model (another path, the same document route) -- what a
        # query-side tuned model shares with the base: the corpus is read from the cache
        runs = compare_retrievers(cfg, ds, texts, qrels, {"base": str(model), "candidate": str(work / "candidate")})
        counts = {"queries": len(texts), "ndcg@10": round(aggregate(runs["dense"]["base"])["ndcg@10"], 4)}
    elif stage == "rerun x2":
        from kadet.kit.encode import Encoder
        from kadet.kit.data import read_corpus
        from kadet.stages.label.stage import label

        n = sum(1 for _ in open(corpus, "rb"))
        for run in range(2):
            write_corpus(corpus, max(1, int(n * GROWTH)), start=n + run * int(n * GROWTH), seed=run + 1)
            fp = fingerprints(cfg)
            prepare(cfg, work / f"prep{run}", fingerprint=fp)
            clean = read_corpus(work / f"prep{run}" / "corpus.jsonl")
            Encoder.from_config(cfg).encode([d.full_text(cfg.data.title_separator) for d in clean.values()])
            del clean
            m = label(cfg, work / "mine" / "candidates.jsonl", work / f"prep{run}" / "corpus.jsonl", work / f"label{run}")
            counts[f"run{run + 2}_pairs_reused"] = m.counts.get("pairs_reused", 0)
    else:
        raise ValueError(stage)
    return counts


def _hwm_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(stage: str, work: Path, model: Path) -> None:
    """The child process: import what every stage imports, note the RSS, run, print a JSON line."""
    import sentence_transformers  # noqa: F401
    import torch  # noqa: F401

    import kadet.stages.evaluate  # noqa: F401
    import kadet.stages.label.stage  # noqa: F401
    import kadet.stages.mine  # noqa: F401

    base = _rss_kib()
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    counts = run_stage(stage, work, model)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu0, "base_kib": base,
                      "peak_kib": _hwm_kib(), "counts": counts}))


def _cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _in_child(args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scale", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"{' '.join(args)}: exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


# ----------------------------------------------------------------------------- the table

def _commit() -> str:
    p = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return p.stdout.strip() + ("+dirty" if dirty else "")


def measure_size(n: int, tmp: Path, model: Path) -> list[dict]:
    work = tmp / f"n{n}"
    work.mkdir()
    t0 = time.perf_counter()
    write_corpus(work / "corpus.jsonl", n)
    import shutil

    shutil.copytree(model, work / "candidate")
    print(f"  {n:,} passages written in {time.perf_counter() - t0:.0f} s "
          f"({(work / 'corpus.jsonl').stat().st_size / 2**20:,.0f} MiB)", file=sys.stderr, flush=True)
    rows = []
    for stage in STAGES:
        r = _in_child(["--child", stage, "--work", str(work), "--model", str(model)])
        rows.append({"stage": stage, "passages": n, "seconds": round(r["seconds"], 2),
                     "us_per_passage": round(r["seconds"] / n * 1e6, 2), "cpu_seconds": round(r["cpu_seconds"], 2),
                     "cpu_us_per_passage": round(r["cpu_seconds"] / n * 1e6, 2),
                     "peak_gib": round(r["peak_kib"] / 2**20, 3), "base_gib": round(r["base_kib"] / 2**20, 3),
                     "counts": r["counts"]})
        print(f"  {n:,} {stage}: {r['seconds']:.1f} s, peak {r['peak_kib'] / 2**20:.2f} GiB {r['counts']}",
              file=sys.stderr, flush=True)
    wd = work / "work"
    rows.append({"stage": "disk", "passages": n, "cache_mib": round(du(wd / "cache") / 2**20, 1),
                 "store_mib": round(du(wd / "store") / 2**20, 1),
                 "store_corpus_mib": round(du(wd / "store" / "corpus") / 2**20, 1),
                 "store_teacher_mib": round(du(wd / "store" / "teacher") / 2**20, 1)})
    shutil.rmtree(work)
    return rows


def table(rows: list[dict]) -> tuple[str, float, str, float]:
    """The printed table, the worst per-passage ratio to the smallest size, its stage, and the
    largest peak RSS."""
    stage_rows = [r for r in rows if r["stage"] != "disk"]
    first = {}
    for r in stage_rows:
        first.setdefault(r["stage"], r)
    lines = ["| stage | passages | s | us/passage | ratio | CPU us/passage | CPU ratio | peak RSS GiB | "
             "RSS after imports GiB |", "|---|---|---|---|---|---|---|---|---|"]
    worst, worst_stage = 0.0, ""
    for r in stage_rows:
        ratio = r["us_per_passage"] / max(first[r["stage"]]["us_per_passage"], 1e-9)
        r["ratio"] = round(ratio, 2)
        if r["passages"] != first[r["stage"]]["passages"] and ratio > worst:
            worst, worst_stage = ratio, r["stage"]
        cpu = r.get("cpu_us_per_passage")
        cpu_ratio = cpu / max(first[r["stage"]].get("cpu_us_per_passage") or 1e-9, 1e-9) if cpu is not None else None
        lines.append(f"| {r['stage']} | {r['passages']:,} | {r['seconds']:,.1f} | {r['us_per_passage']:,.1f} | "
                     f"{ratio:.2f} | {'-' if cpu is None else f'{cpu:,.1f}'} | "
                     f"{'-' if cpu_ratio is None else f'{cpu_ratio:.2f}'} | {r['peak_gib']:.2f} | {r['base_gib']:.2f} |")
    lines += ["", "| passages | embedding cache MiB | store MiB (corpus digests, teacher scores) |", "|---|---|---|"]
    lines += [f"| {r['passages']:,} | {r['cache_mib']:,.1f} | {r['store_mib']:,.1f} ({r['store_corpus_mib']:,.1f}, "
              f"{r['store_teacher_mib']:,.1f}) |" for r in rows if r["stage"] == "disk"]
    peak = max(r["peak_gib"] for r in stage_rows)
    return "\n".join(lines), worst, worst_stage or "-", peak


def write_costs(rows: list[dict], stamp: dict) -> None:
    """``kadet/tools/scale_costs.json``: per stage, the cost per passage at the largest size and the
    peak RSS as a line through the two largest sizes (fixed GiB + GiB per passage)."""
    from kadet.tools.plan import SCALE_COSTS

    stages = {}
    for stage in STAGES:
        sel = sorted((r for r in rows if r["stage"] == stage), key=lambda r: r["passages"])
        small, large = sel[-2] if len(sel) > 1 else sel[-1], sel[-1]
        growth = (large["peak_gib"] - small["peak_gib"]) / max(1, large["passages"] - small["passages"])
        growth = max(0.0, growth)
        stages[stage] = {"us_per_passage": large["us_per_passage"], "gib_per_passage": growth,
                         "fixed_gib": round(max(large["base_gib"], large["peak_gib"] - growth * large["passages"]), 3),
                         "sizes": [r["passages"] for r in sel]}
    mine = next(r for r in reversed(rows) if r["stage"] == "mine")
    costs = {"machine": stamp["machine"], "date": stamp["date"], "commit": stamp["commit"],
             "command": "python benchmarks/scale.py --write-costs", "encoder": "tiny random BERT, 32 dimensions",
             "tiny_dim": 32, "real_dim": 384, "queries": mine["counts"]["queries"], "stages": stages}
    if SCALE_COSTS.exists():              # the search rate comes from benchmarks/ann_recall.py: kept
        costs.update({k: v for k, v in json.loads(SCALE_COSTS.read_text(encoding="utf-8")).items() if k == "search"})
    SCALE_COSTS.write_text(json.dumps(costs, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="corpus sizes, comma-separated")
    ap.add_argument("--label", default="", help="a name for these rows in the results file (e.g. before)")
    ap.add_argument("--no-save", action="store_true", help="print only; keep no rows")
    ap.add_argument("--write-costs", action="store_true",
                    help="also write kadet/tools/scale_costs.json (what `kadet plan --scale` scales by)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from kadet.kit.models import offline_env

    offline_env()
    if args.child:
        child(args.child, Path(args.work), Path(args.model))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    stamp = {"machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
             "commit": _commit(), "label": args.label}
    print(f"machine: {stamp['machine']}; commit {stamp['commit']}; {stamp['date']}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="kadet-scale-") as tmp:
        from tests.doubles.data import make_tiny_st

        model = make_tiny_st(Path(tmp) / "tiny")
        for n in sizes:
            rows += measure_size(n, Path(tmp), model)
    text, worst, stage, peak = table(rows)
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps({**stamp, **r}) + "\n")
    if args.write_costs:
        write_costs(rows, stamp)
    print(text)
    print(f"worst per-item ratio {worst:.2f} ({stage}); peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
