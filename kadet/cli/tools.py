"""The tool subcommands: judge, config, export, data and prune."""

from __future__ import annotations

import argparse
from pathlib import Path

from kadet.cli.command import Command, load, need_data
from kadet.cli.options import DATA, PORT, POSITIVE, Opt
from kadet.core.config import dump_config
from kadet.core.errors import KadetError
from kadet.core.storage import work_dir_lock


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(load(args)), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kadet.tools.export import export_model

    cfg = load(args)
    print(export_model(cfg, args.out, model=args.model, version=args.version, onnx=not args.no_onnx,
                       force=args.force).summary())
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from kadet.tools.judge import JudgeSettings, export, make_server, open_session, url_of

    cfg = load(args)
    need_data(cfg)
    queries = args.queries or str(Path(cfg.data.data_dir) / "queries.jsonl")
    if not Path(queries).exists():
        raise KadetError(f"no queries to judge: {queries} not found; pass --queries FILE (.jsonl or .txt)")
    out = Path(args.out or Path(cfg.work_dir) / "judge")
    settings = JudgeSettings(base=args.base or cfg.retrieval.model, candidate=args.model, depth=args.depth,
                             max_queries=args.max_queries, random_share=args.random_share, seed=cfg.seed)
    # the work-dir lock only while a new pool is built (it writes the embedding cache); serving for
    # hours then holds only <out>'s lock, so other kadet commands can run in the same work dir
    if args.export and not any((out / f).exists() for f in ("pool.json", "judgements.jsonl")):
        # nothing judged yet: do not spend minutes building a pool only to say so
        raise KadetError(f"judge --export: nothing judged in {out} (no pool.json, no judgements.jsonl): run kadet "
                         "judge without --export first, judge some queries, then export")
    session = open_session(cfg, cfg.data.data_dir, queries, out, settings, args.export_to, args.force,
                           lock=work_dir_lock(cfg.work_dir, "kadet judge (pooling)"))
    if args.export:
        print(export(session).summary())
        return 0
    with work_dir_lock(out, "kadet judge (serving)"):
        server = make_server(session, port=args.port, on_export=lambda result: print(result.summary(), flush=True))
        url = url_of(server)
        print(f"kadet judge: {len(session.pool.queries)} queries; open {url} (Ctrl-C to stop; answers are saved "
              f"to {out}/judgements.jsonl as you go)", flush=True)
        if not args.no_browser:
            import webbrowser

            webbrowser.open(url)
        try:
            server.serve_forever()
        finally:
            server.server_close()
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from kadet.tools.prune import format_removals, prune

    cfg = load(args)
    removals = prune(cfg, cfg.retention.keep_runs, dry_run=args.dry_run, all_models=args.all_models)
    print(format_removals(removals, args.dry_run, cfg.retention.keep_runs))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from kadet.tools.datasets import get_dataset

    dest = get_dataset(args.name, args.dir, url=args.url)
    print(f"kadet data: {args.name} in {dest} (checksums verified)")
    return 0


JUDGE = Command(
    "judge", "judge your own queries in a local web page: pooled, blinded, saved at once; export BEIR qrels",
    "Pools the top --depth passages of the base model, the candidate (--model) and BM25 for up to "
    "--max-queries queries (most disagreement first, plus a random share), shuffled and blinded, and "
    "serves a page on 127.0.0.1 to grade them 2/1/0 with the keyboard. Answers go to "
    "<out>/judgements.jsonl at once; rerun the same command to resume. --export writes the completely "
    "judged queries as queries.jsonl + qrels/test.tsv and prints base vs candidate nDCG@10.",
    cmd_judge,
    (DATA, Opt("--queries", help="queries to judge: queries.jsonl ({_id, text}) or .txt, one per line "
                                 "(default <data>/queries.jsonl)"),
     Opt("--model", help="the candidate: a sentence-transformers folder", kw={"required": True}),
     Opt("--base", help="the base model (default retrieval.model)"),
     Opt("--out", help="pool and answers (default <work_dir>/judge)"),
     Opt("--port", help="port on 127.0.0.1 (default 0: a free one)", kw={"type": PORT, "default": 0}),
     Opt("--max-queries", help="queries to judge (default 50)", kw={"type": POSITIVE, "default": 50}),
     Opt("--depth", help="passages pooled per system and query (default 10)", kw={"type": POSITIVE, "default": 10}),
     Opt("--random-share", help="share of the queries drawn at random, not for disagreement (default 0.3)",
         kw={"type": float, "default": 0.3}),
     Opt("--export", help="write the judged queries as BEIR files and print the figures; no page",
         kw={"action": "store_true"}),
     Opt("--export-to", help="folder for --export and the page's export (default the --data folder)"),
     Opt("--force", help="overwrite an existing qrels/test.tsv on export", kw={"action": "store_true"}),
     Opt("--no-browser", help="do not open a browser, only print the URL", kw={"action": "store_true"})),
    locks=False)  # it takes the work-dir lock itself, only while it builds a pool (see cmd_judge)
CONFIG = Command("config", "print the effective configuration as YAML",
                 "Print the defaults merged with --config and --set.", cmd_config, locks=False)
EXPORT = Command(
    "export", "export a model for use without kadet or MLflow: query/, document/, model/, ONNX, README",
    "Writes --out: query/ and document/ (plain sentence-transformers folders: the query and document "
    "encoders), model/ (the source as is), onnx/{query,document}/ (model.onnx ending in the sentence "
    "embedding, int8 copy, tokenizer), README.md with the calls, export.json. Source: --model PATH, "
    "else --version of register.model_name in the work dir's MLflow registry.",
    cmd_export,
    (Opt("--out", help="output folder", kw={"required": True}),
     Opt("--model", help="a sentence-transformers folder to export (e.g. <work_dir>/distill/model)"),
     Opt("--version", help="registry version without --model: a number, champion, challenger or "
                           "latest (default latest)"),
     Opt("--model-name", "register.model_name"),
     Opt("--no-onnx", help="skip the ONNX files", kw={"action": "store_true"}),
     Opt("--force", help="replace --out if it exists", kw={"action": "store_true"})),
    locks=False)
DATASETS = Command(
    "data", "fetch a public BEIR dataset: kadet data get NAME DIR",
    "get: download the dataset's BEIR zip (or --url), unzip it beside DIR, check every file's "
    "sha256 against kadet/tools/datasets.py, then move it to DIR (corpus.jsonl, queries.jsonl, "
    "qrels/*.tsv). A failed or tampered download leaves no DIR.",
    cmd_data,
    (Opt("action", help="get: download, verify and unpack dataset NAME into DIR", kw={"choices": ["get"]}),
     Opt("name", help="dataset (known: scifact)", kw={"metavar": "NAME"}),
     Opt("dir", help="folder to create (must not exist, or be empty)", kw={"metavar": "DIR"}),
     Opt("--url", help="download the zip from here instead (a mirror or local copy)")),
    config=False, locks=False)
PRUNE = Command(
    "prune", "remove what older runs left in the work dir and refused registry versions (kadet/tools/prune.py)",
    "Keeps the newest --keep runs' KFP outputs (<work_dir>/kfp), logs and kept generation/teacher stores "
    "(<work_dir>/store), the resume logs of runs newer than the newest successful one, the newest --keep refused "
    "registry versions, and always the champion; removes the rest (a refused version with its model files where the "
    "MLflow store is local). --dry-run prints what it would remove, with sizes.",
    cmd_prune,
    (Opt("--keep", "retention.keep_runs"),
     Opt("--dry-run", help="print what would be removed and its size; remove nothing", kw={"action": "store_true"}),
     Opt("--all-models", help="the refused versions of every registered model, not only register.model_name's "
                              "(on a cluster each corpus registers its own; the kadet-prune CronJob passes it)",
         kw={"action": "store_true"})))
