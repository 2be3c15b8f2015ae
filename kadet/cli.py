"""The ``kadet`` command line: one subcommand per stage; parses options, calls the library.

Every subcommand takes ``--config FILE`` (YAML, see :mod:`kadet.config`) and any number of
``--set section.key=value`` overrides; its own flags are shortcuts for the common keys.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from kadet import __version__
from kadet.config import KadetConfig, dump_config, load_config
from kadet.errors import KadetError
from kadet.stages import input_path
from kadet.storage import output_dir, work_dir_lock

log = logging.getLogger("kadet")


def _count(low: int):
    """An argparse type: an integer >= ``low`` (a clear usage error otherwise, never a traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


POSITIVE, NON_NEGATIVE = _count(1), _count(0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (defaults are in kadet/config.py)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set retrieval.top_k=200 (repeatable)",
    )
    p.add_argument("--work-dir", help="working folder for outputs and caches (config: work_dir; default .kadet)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kadet",
        description=(
            "kadet adapts a dense-retrieval embedding model to one corpus: synthetic queries, "
            "mined negatives, teacher labels, listwise distillation, gated MLflow registration."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kadet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    ev = sub.add_parser(
        "evaluate",
        help="nDCG@10 / Recall@100 / MRR@10 of a retriever on a BEIR folder",
        description=(
            "Retrieve for the judged queries of one split and score the run with trec_eval "
            "(pytrec_eval). Prints a table and writes metrics.json, per_query.json, run.tsv "
            "and manifest.json to --output."
        ),
    )
    ev.add_argument("--data", required=False, help="BEIR folder or s3:// URI (config: data.data_dir)")
    ev.add_argument("--model", help="sentence-transformers folder, s3:// URI or packaged name "
                                    "(config: retrieval.model; default all-MiniLM-L6-v2)")
    ev.add_argument("--retriever", choices=["dense", "bm25", "hybrid"],
                    help="dense, bm25 (bm25s, stemmed) or hybrid (RRF of both) (config: retrieval.retriever)")
    ev.add_argument("--split", help="qrels split, i.e. qrels/<split>.tsv (config: data.split; default test)")
    ev.add_argument("--top-k", type=POSITIVE, help="documents retrieved per query (config: retrieval.top_k)")
    ev.add_argument("--max-queries", type=POSITIVE, help="evaluate only the first N judged queries")
    ev.add_argument("--output", help="output folder (default <work_dir>/evaluate/<retriever>)")
    ev.add_argument("--json", action="store_true", help="print metrics as JSON instead of a table")
    _common(ev)

    pr = sub.add_parser(
        "prepare",
        help="select passages: clean, dedupe, exclude evaluation positives, sample",
        description=(
            "Reads a BEIR folder (or a corpus .jsonl/.parquet), drops passages under "
            "prepare.min_chars, exact and near-duplicates, and every passage judged relevant in "
            "the qrels of prepare.exclude_splits / prepare.exclude_qrels, then samples "
            "prepare.sample_size passages (seeded). Writes passages.jsonl and manifest.json."
        ),
    )
    pr.add_argument("--data", help="BEIR folder, corpus file or s3:// URI (config: data.data_dir)")
    pr.add_argument("--sample-size", type=NON_NEGATIVE, help="passages to keep (config: prepare.sample_size)")
    pr.add_argument("--exclude-qrels", action="append", default=[], metavar="TSV",
                    help="extra qrels file whose relevant passages are excluded (repeatable)")
    pr.add_argument("--output", help="output folder (default <work_dir>/prepare)")
    _common(pr)

    gen = sub.add_parser(
        "generate",
        help="synthetic queries of several types per passage (local model or TGI endpoint)",
        description=(
            "Generates generate.types queries per passage with few-shot prompts, cleans them and "
            "writes queries.jsonl + manifest.json. Resumable: rerun the same command after a "
            "crash and it continues from generations.jsonl."
        ),
    )
    gen.add_argument("--passages", help="passages.jsonl from prepare (default <work_dir>/prepare/passages.jsonl)")
    gen.add_argument("--backend", choices=["local", "tgi"], help="config: generate.backend (default local)")
    gen.add_argument("--types", help="comma-separated query types, one query per passage each "
                                     "(question,claim,keywords,title,web,msmarco); config: generate.types")
    gen.add_argument("--max-passages", type=NON_NEGATIVE, help="use only the first N passages (config: generate.max_passages)")
    gen.add_argument("--model", help="local: smollm2, a .gguf or a causal-LM folder; tgi: model name")
    gen.add_argument("--tgi-url", help="endpoint for --backend tgi (config: generate.tgi_url)")
    gen.add_argument("--concurrency", type=POSITIVE, help="tgi: requests in flight (config: generate.concurrency)")
    gen.add_argument("--output", help="output folder (default <work_dir>/generate)")
    _common(gen)

    mi = sub.add_parser(
        "mine",
        help="candidate lists per synthetic query: dense + BM25, round-trip filter, RRF",
        description=("Retrieves mine.top_k per retriever over the prepare stage's clean corpus, keeps a query "
                     "only if its source passage is in the top mine.round_trip_depth (any/all retrievers), "
                     "fuses with RRF and writes candidates.jsonl + manifest.json."),
    )
    mi.add_argument("--queries", help="queries.jsonl (default <work_dir>/generate/queries.jsonl)")
    mi.add_argument("--corpus", help="clean corpus.jsonl (default <work_dir>/prepare/corpus.jsonl)")
    mi.add_argument("--output", help="output folder (default <work_dir>/mine)")
    _common(mi)

    la = sub.add_parser(
        "label",
        help="teacher scores for each candidate list, then consistency/percentile/normalise/top-L/split",
        description=("Scores the candidate lists with label.teacher (sharded by query range with "
                     "label.shard_index / label.num_shards, resumable), then merges the shards and writes "
                     "labels.jsonl + manifest.json. --score-only / --merge-only split the two steps."),
    )
    la.add_argument("--candidates", help="candidates.jsonl (default <work_dir>/mine/candidates.jsonl)")
    la.add_argument("--corpus", help="clean corpus.jsonl (default <work_dir>/prepare/corpus.jsonl)")
    la.add_argument("--teacher", help="dense, bm25, ql, cross-encoder:PATH, monot5:PATH, rankt5:PATH, ensemble")
    la.add_argument("--score-only", action="store_true", help="score this shard, do not merge")
    la.add_argument("--merge-only", action="store_true", help="merge the shards' scores and filter")
    la.add_argument("--output", help="output folder (default <work_dir>/label)")
    _common(la)

    di = sub.add_parser(
        "distill",
        help="train the embedding model on labels.jsonl (listwise KL + InfoNCE, GradCache)",
        description=("Trains retrieval.model on the label stage's labels: distill.loss listwise (KL + "
                     "0.1 x InfoNCE) or infonce, distill.mode full or query (frozen document tower). "
                     "Checkpoints every epoch; rerunning resumes. Writes model/, curves.json, manifest.json."),
    )
    di.add_argument("--labels", help="labels.jsonl (default <work_dir>/label/labels.jsonl)")
    di.add_argument("--mode", choices=["full", "query"], help="config: distill.mode")
    di.add_argument("--loss", choices=["listwise", "infonce"], help="config: distill.loss")
    di.add_argument("--epochs", type=POSITIVE, help="config: distill.epochs")
    di.add_argument("--output", help="output folder (default <work_dir>/distill)")
    _common(di)

    tr = sub.add_parser(
        "teacher-report",
        help="nDCG@10 of each teacher reranking the base model's top-k for human queries",
        description=("Reranks the base dense model's top --depth for the judged queries of --split with each "
                     "--teacher and prints nDCG@10. --grid name=w1,w2 scores ensemble weight combinations "
                     "(choose them on a split other than test)."),
    )
    tr.add_argument("--data", help="BEIR folder (config: data.data_dir)")
    tr.add_argument("--teacher", action="append", default=[],
                    help="dense, bm25, ql, cross-encoder:PATH, monot5:PATH, rankt5:PATH or ensemble (repeatable; "
                         "default: dense, bm25, ql, ensemble)")
    tr.add_argument("--split", default="test")
    tr.add_argument("--depth", type=POSITIVE, default=20, help="rerank this many base results")
    tr.add_argument("--max-queries", type=POSITIVE, help="only the first N judged queries")
    tr.add_argument("--grid", action="append", default=[], metavar="NAME=W1,W2",
                    help="ensemble member weights to try (repeatable)")
    _common(tr)

    ru = sub.add_parser(
        "run",
        help="run the whole pipeline locally (KFP SubprocessRunner, MLflow in <work_dir>)",
        description=(
            "Runs the kadet DAG (the one compiled to pipelines/kadet_pipeline.yaml) on this machine "
            "with kfp.local.SubprocessRunner: prepare, generate, mine, label, distill, evaluate, "
            "register. Defaults: kadet/profiles/local.yaml (a CPU profile), packaged models, offline, "
            "MLflow sqlite store and artifacts under --work-dir (default .kadet). Prints the wall time "
            "per stage, base vs candidate nDCG@10 and the registry outcome."
        ),
    )
    ru.add_argument("--data", required=True, help="BEIR folder or s3:// URI (corpus, queries, qrels)")
    ru.add_argument("--shards", type=POSITIVE, default=1, help="generation and labelling shards (ParallelFor)")
    ru.add_argument("--profile", default="local",
                    help="settings under --config/--set: local (CPU, the default), gpu (METHOD.md's scale: "
                         "full tuning, GradCache batch 4096, an LLM server for generation) or a YAML file")
    ru.add_argument("--json", action="store_true", help="print the summary as JSON")
    _common(ru)

    for name, helptext in (("submit", "start one run of the compiled pipeline on a Kubeflow Pipelines endpoint"),
                           ("schedule", "create a recurring run (cron, max_concurrency=1, no catch-up)")):
        rp = sub.add_parser(name, help=helptext, description=helptext + " with kfp.Client; see pipelines/remote.py.")
        rp.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
        rp.add_argument("--data", help="corpus URI as the cluster sees it (pipeline parameter data_uri)")
        rp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline parameter (repeatable), e.g. --param training_mode=full")
        rp.add_argument("--experiment", default="kadet", help="KFP experiment (created if missing)")
        rp.add_argument("--package", help="compiled pipeline YAML (default pipelines/kadet_pipeline.yaml)")
        rp.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
        rp.add_argument("--service-account", default="kadet-pipeline-runner")
        rp.add_argument("--no-cache", action="store_true", help="disable KFP caching for this run")
        rp.add_argument("--token", help="bearer token (default $KFP_TOKEN)")
        if name == "submit":
            rp.add_argument("--run-name")
        else:
            rp.add_argument("--cron", required=True, help='cron, e.g. "0 3 * * 1" (5 fields) or KFP\'s 6 fields')
            rp.add_argument("--name", default="kadet-retrain", help="recurring run name")
        _common(rp)

    cfg = sub.add_parser("config", help="print the effective configuration as YAML",
                         description="Print the defaults merged with --config and --set.")
    _common(cfg)
    return parser


def _load(args: argparse.Namespace) -> KadetConfig:
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "work_dir", None):
        cfg.work_dir = args.work_dir
    return cfg


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kadet.evaluate import evaluate, format_table

    cfg = _load(args)
    if args.data:
        cfg.data.data_dir = args.data
    if args.split:
        cfg.data.split = args.split
    if args.model:
        cfg.retrieval.model = args.model
    if args.retriever:
        cfg.retrieval.retriever = args.retriever
    if args.top_k:
        cfg.retrieval.top_k = args.top_k
    if not cfg.data.data_dir:
        raise KadetError("no data: pass --data DIR or set data.data_dir")
    out = args.output or str(Path(cfg.work_dir) / "evaluate" / cfg.retrieval.retriever)
    with output_dir(out) as local:
        result = evaluate(cfg, output_dir=local, max_queries=args.max_queries)
    label = f"{cfg.retrieval.retriever} ({cfg.retrieval.model})" if cfg.retrieval.retriever != "bm25" else "bm25"
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    else:
        print(format_table([(label, result.metrics)]))
        print(f"\n{len(result.per_query)} queries, split {cfg.data.split}, {result.seconds:.1f} s; wrote {out}/metrics.json")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from kadet.prepare import prepare

    cfg = _load(args)
    if args.data:
        cfg.data.data_dir = args.data
    if args.sample_size is not None:
        cfg.prepare.sample_size = args.sample_size
    cfg.prepare.exclude_qrels += args.exclude_qrels
    if not cfg.data.data_dir:
        raise KadetError("no data: pass --data DIR or set data.data_dir")
    out = args.output or str(Path(cfg.work_dir) / "prepare")
    with output_dir(out) as local:
        m = prepare(cfg, local)
    print(f"prepare: kept {m.counts['passages']} of {m.counts['corpus']} passages; dropped {m.dropped}; wrote {out}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from kadet.generate import generate

    cfg = _load(args)
    g = cfg.generate
    if args.backend:
        g.backend = args.backend
    if args.types:
        g.types = {t.strip(): 1.0 for t in args.types.split(",") if t.strip()}
    if args.max_passages is not None:
        g.max_passages = args.max_passages
    if args.model:
        g.model = args.model
    if args.tgi_url:
        g.tgi_url = args.tgi_url
    if args.concurrency:
        g.concurrency = args.concurrency
    passages = args.passages or input_path(cfg.work_dir, "generate", "passages")
    out = args.output or str(Path(cfg.work_dir) / "generate")
    with output_dir(out) as local:
        m = generate(cfg, passages, local)
    print(f"generate: kept {m.counts['kept']} of {m.counts['finished']} outputs "
          f"({100 * m.extra['usable_fraction']:.1f}% usable); dropped {m.dropped}; wrote {out}/queries.jsonl")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from kadet.mine import mine

    cfg = _load(args)
    work = Path(cfg.work_dir)
    out = args.output or str(work / "mine")
    with output_dir(out) as local:
        m = mine(cfg, args.queries or input_path(work, "mine", "queries"), args.corpus or input_path(work, "mine", "corpus"),
                 local)
    print(f"mine: kept {m.counts['kept']} of {m.counts['queries']} queries; dropped {m.dropped}; "
          f"round-trip hits {m.extra['round_trip_hits']}; wrote {out}/candidates.jsonl")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from kadet.label import label

    cfg = _load(args)
    if args.teacher:
        cfg.label.teacher = args.teacher
    work = Path(cfg.work_dir)
    out = args.output or str(work / "label")
    with output_dir(out) as local:
        m = label(cfg, args.candidates or input_path(work, "label", "candidates"),
                  args.corpus or input_path(work, "label", "corpus"), local, score=not args.merge_only,
                  merge=not args.score_only)
    if args.score_only:
        print(f"label: scored {m.counts.get('scored_now', 0)} queries in shard {cfg.label.shard_index}/{cfg.label.num_shards}")
    else:
        print(f"label: {m.counts['labelled']} of {m.counts['queries']} queries labelled "
              f"({m.counts['train']} train / {m.counts['dev']} dev); dropped {m.dropped}; wrote {out}/labels.jsonl")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from kadet.distill import distill

    cfg = _load(args)
    for key in ("mode", "loss", "epochs"):
        if getattr(args, key) is not None:
            setattr(cfg.distill, key, getattr(args, key))
    work = Path(cfg.work_dir)
    out = args.output or str(work / "distill")
    with output_dir(out) as local:
        m = distill(cfg, args.labels or input_path(work, "distill", "labels"), local)
    print(f"distill: {m.counts['epochs']} epochs, best epoch {m.extra['best_epoch']} "
          f"(dev loss {m.extra['best_dev_loss']}); wrote {out}/model")
    return 0


def cmd_teacher_report(args: argparse.Namespace) -> int:
    from kadet.teacher_report import format_report, teacher_report

    cfg = _load(args)
    if args.data:
        cfg.data.data_dir = args.data
    if not cfg.data.data_dir:
        raise KadetError("no data: pass --data DIR or set data.data_dir")
    grid = {}
    for g in args.grid:
        name, _, values = g.partition("=")
        try:
            grid[name.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            raise KadetError(f"--grid {g!r}: expected NAME=W1,W2,...") from None
    report = teacher_report(cfg, args.teacher or ["dense", "bm25", "ql", "ensemble"], args.split, args.depth,
                            args.max_queries, grid, Path(cfg.work_dir) / "teacher-report")
    print(format_report(report))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kadet.register import display
    from pipelines.local import run_local

    summary = run_local(args.data, args.work_dir or ".kadet", args.config, args.overrides, shards=args.shards,
                        profile=args.profile)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"\nkadet run: {summary['seconds'] / 60:.1f} min; MLflow {summary['tracking_uri']} "
          f"(parent run {summary['parent_run']})")
    for name, sec in summary["stages"]:
        print(f"  {name:<22} {sec:8.1f} s")
    b, c = summary["base"], summary["candidate"]
    nd, rc = summary["metrics"]
    if b and c:
        ci = summary.get("gain_ci")
        ci_text = f" (gain {c[nd] - b[nd]:+.4f}, paired bootstrap CI [{ci[0]:+.4f}, {ci[1]:+.4f}])" if ci else ""
        print(f"{display(nd)} base {b[nd]:.4f} -> candidate {c[nd]:.4f}{ci_text}; "
              f"{display(rc)} {b[rc]:.4f} -> {c[rc]:.4f}")
    print(f"registered version {summary['version']}: {summary['gate']}; champion is version {summary['champion']}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.remote import parse_params, submit

    run_id = submit(args.host, parse_params(args.param, args.data), args.experiment, args.run_name, args.package,
                    args.namespace, args.service_account, not args.no_cache, args.token)
    print(f"submitted run {run_id}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from pipelines.remote import parse_params, schedule

    job = schedule(args.host, parse_params(args.param, args.data), args.cron, args.name, args.experiment,
                   args.package, args.namespace, args.service_account, not args.no_cache, args.token)
    print(f"created recurring run {job}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(_load(args)), end="")
    return 0


#: Commands that do not write to the work dir, so they take no lock on it.
UNLOCKED = ("config", "submit", "schedule")
COMMANDS = {
    "evaluate": cmd_evaluate, "prepare": cmd_prepare, "generate": cmd_generate, "mine": cmd_mine,
    "label": cmd_label, "distill": cmd_distill, "teacher-report": cmd_teacher_report, "config": cmd_config, "run": cmd_run,
    "submit": cmd_submit, "schedule": cmd_schedule,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "sentence_transformers", "bm25s", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command in UNLOCKED:
            return COMMANDS[args.command](args)
        work_dir = args.work_dir or load_config(args.config, args.overrides).work_dir
        with work_dir_lock(work_dir, f"kadet {args.command}"):
            return COMMANDS[args.command](args)
    except KadetError as exc:
        print(f"kadet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kadet: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return 130
    except OSError as exc:  # a file that is a folder, a full disk, no permission: the message names the path
        if args.verbose:
            raise
        print(f"kadet: error: {exc} (-v shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
