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

log = logging.getLogger("kadet")


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
    ev.add_argument("--top-k", type=int, help="documents retrieved per query (config: retrieval.top_k)")
    ev.add_argument("--max-queries", type=int, help="evaluate only the first N judged queries")
    ev.add_argument("--output", help="output folder (default <work_dir>/evaluate/<retriever>)")
    ev.add_argument("--json", action="store_true", help="print metrics as JSON instead of a table")
    _common(ev)

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
    out = Path(args.output) if args.output else Path(cfg.work_dir) / "evaluate" / cfg.retrieval.retriever
    result = evaluate(cfg, output_dir=out, max_queries=args.max_queries)
    label = f"{cfg.retrieval.retriever} ({cfg.retrieval.model})" if cfg.retrieval.retriever != "bm25" else "bm25"
    if args.json:
        print(json.dumps(result.metrics, indent=2))
    else:
        print(format_table([(label, result.metrics)]))
        print(f"\n{len(result.per_query)} queries, split {cfg.data.split}, {result.seconds:.1f} s; wrote {out}/metrics.json")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(_load(args)), end="")
    return 0


COMMANDS = {"evaluate": cmd_evaluate, "config": cmd_config}


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
        return COMMANDS[args.command](args)
    except KadetError as exc:
        print(f"kadet: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
