"""The ``kadet`` command line: one subcommand per stage; parses options, calls the library.

Every subcommand takes ``--config FILE`` (YAML, see :mod:`kadet.core.config`) and any number of
``--set section.key=value`` overrides; its own flags are shortcuts for the common keys.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kadet import __version__
from kadet.core.config import (CHOICES, RANGES, TEACHERS, KadetConfig, dump_config, field_docs, get_path, load_config,
                          names_component, profile_config, set_path, validate)
from kadet.core.errors import KadetError
from kadet.core.layout import STAGES, input_path
from kadet.core.storage import is_s3, output_dir, output_dir_for_rank, work_dir_lock
from kadet.kit.models import offline_env

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


@dataclass(frozen=True)
class Opt:
    """One flag of a subcommand. With ``key`` it is a shortcut for that config setting: its type,
    choices and help come from :mod:`kadet.core.config` (the one typed source) and ``_load`` applies it;
    ``to`` converts the text first (e.g. ``--types a,b`` to a mapping). Without ``key`` it is the
    command's own option (``kw`` goes to argparse as is); with ``extends`` too, ``_load`` adds its
    values (an ``append`` flag's) to that list setting."""

    flag: str
    key: str | None = None
    help: str = ""
    to: Callable[[str], Any] | None = None
    kw: dict = field(default_factory=dict)
    extends: str | None = None

    def add_to(self, p: argparse.ArgumentParser) -> None:
        if self.key is None:
            p.add_argument(self.flag, help=self.help, **self.kw)
            return
        *parents, name = self.key.split(".")
        tp = typing.get_type_hints(type(get_path(KadetConfig(), ".".join(parents))))[name]
        kind = {int: NON_NEGATIVE if RANGES.get(self.key, (1,))[0] == 0 else POSITIVE}.get(tp, None)
        choices = CHOICES.get(self.key)
        p.add_argument(self.flag, dest=self.key, type=self.to or kind or str, choices=choices,
                       metavar=None if choices else self.flag.lstrip("-").upper().replace("-", "_"),
                       help=f"{self.help or field_docs().get(self.key, '')} (config: {self.key})".strip())


def _inputs(stage: str) -> list[Opt]:
    """``--<input> FILE`` for each input of ``stage`` (kadet/core/layout.py), default the upstream output."""
    return [Opt(f"--{name}", help=f"{STAGES[up].outputs[out]} (default <work_dir>/{up}/{STAGES[up].outputs[out]})")
            for name, (up, out) in STAGES[stage].inputs.items()]


def _output(default: str) -> Opt:
    return Opt("--output", help=f"output folder, local or s3:// (default <work_dir>/{default})")


def _types(text: str) -> dict[str, float]:
    return {t.strip(): 1.0 for t in text.split(",") if t.strip()}


DATA = Opt("--data", "data.data_dir")
#: name -> (help, description, options). Every subcommand also takes --config, --set, --work-dir, -v.
SUBCOMMANDS: dict[str, tuple[str, str, list[Opt]]] = {
    "evaluate": ("nDCG@10 / Recall@100 / MRR@10 of a retriever on a BEIR folder",
                 "Retrieve for the judged queries of one split and score the run with trec_eval (pytrec_eval). "
                 "Prints a table and writes metrics.json, per_query.json, run.tsv and manifest.json to --output.",
                 [DATA, Opt("--model", "retrieval.model"), Opt("--retriever", "retrieval.retriever"),
                  Opt("--split", "data.split"), Opt("--top-k", "retrieval.top_k", "documents retrieved per query"),
                  Opt("--max-queries", help="evaluate only the first N judged queries", kw={"type": POSITIVE}),
                  _output("evaluate/<retriever>"),
                  Opt("--json", help="print metrics as JSON instead of a table", kw={"action": "store_true"})]),
    "prepare": ("select passages: clean, dedupe, exclude evaluation positives, sample",
                "Reads a BEIR folder (or a corpus .jsonl/.parquet), drops empty and short passages, exact and "
                "near-duplicates, and every passage judged relevant in the evaluation qrels, then samples "
                "prepare.sample_size passages (seeded). Writes passages.jsonl, corpus.jsonl and manifest.json.",
                [DATA, Opt("--sample-size", "prepare.sample_size"),
                 Opt("--exclude-qrels", help="extra qrels file whose relevant passages are excluded (repeatable)",
                     kw={"action": "append", "default": [], "metavar": "TSV"}, extends="prepare.exclude_qrels"),
                 _output("prepare")]),
    "generate": ("synthetic queries of several types per passage (local model or TGI endpoint)",
                 "Generates generate.types queries per passage, cleans them and writes queries.jsonl + "
                 "manifest.json. Resumable: rerun the same command after a crash and it continues.",
                 [*_inputs("generate"), Opt("--backend", "generate.backend"),
                  Opt("--types", "generate.types", "comma-separated query types, one query per passage each", _types),
                  Opt("--max-passages", "generate.max_passages"), Opt("--model", "generate.model"),
                  Opt("--tgi-url", "generate.tgi.url", "endpoint for --backend tgi"),
                  Opt("--concurrency", "generate.tgi.concurrency", "tgi: requests in flight"), _output("generate")]),
    "mine": ("candidate lists per synthetic query: dense + BM25, round-trip filter, RRF",
             "Retrieves per retriever over the clean corpus, keeps a query only if its source passage comes "
             "back (mine.round_trip), fuses with RRF and writes candidates.jsonl + manifest.json.",
             [*_inputs("mine"), _output("mine")]),
    "label": ("teacher scores for each candidate list, then consistency/percentile/normalise/top-L/split",
              "Scores the candidate lists with label.teacher (sharded by query range with label.shard_index / "
              "label.num_shards, resumable), then merges the shards and writes labels.jsonl + manifest.json. "
              "--score-only / --merge-only split the two steps.",
              [*_inputs("label"), Opt("--teacher", "label.teacher"),
               Opt("--score-only", help="score this shard, do not merge", kw={"action": "store_true"}),
               Opt("--merge-only", help="merge the shards' scores and filter", kw={"action": "store_true"}),
               _output("label")]),
    "distill": ("train the embedding model on labels.jsonl (listwise KL + InfoNCE, GradCache)",
                "Trains retrieval.model on the labels: distill.loss listwise or infonce, distill.mode full or "
                "query. Checkpoints every epoch; rerunning resumes. Writes model/, curves.json, manifest.json.",
                [*_inputs("distill"), Opt("--mode", "distill.mode"), Opt("--loss", "distill.loss"),
                 Opt("--epochs", "distill.epochs"), Opt("--init", "distill.init"), _output("distill")]),
    "teacher-report": ("nDCG@10 of each teacher reranking the base model's top-k for human queries",
                       "Reranks the base dense model's top --depth for the judged queries of --split with each "
                       "--teacher and prints nDCG@10; --grid name=w1,w2 scores ensemble weights (choose them on "
                       "a split other than test).",
                       [DATA, Opt("--teacher", help="a teacher (repeatable; default dense, bm25, ql, ensemble)",
                                  kw={"action": "append", "default": []}),
                        Opt("--split", help="qrels split (default test)", kw={"default": "test"}),
                        Opt("--depth", help="rerank this many base results", kw={"type": POSITIVE, "default": 20}),
                        Opt("--max-queries", help="only the first N judged queries", kw={"type": POSITIVE}),
                        Opt("--grid", help="ensemble member weights to try (repeatable)",
                            kw={"action": "append", "default": [], "metavar": "NAME=W1,W2"})]),
    "run": ("run the whole pipeline locally (KFP SubprocessRunner, MLflow in <work_dir>)",
            "Runs the kadet DAG (the one compiled to kadet/kubeflow/kadet_pipeline.yaml) on this machine with "
            "kfp.local.SubprocessRunner. Defaults: kadet/core/profiles/local.yaml (a CPU profile), packaged models, "
            "offline, MLflow under --work-dir (default .kadet). Prints the wall time per stage, base vs candidate "
            "nDCG@10 and the registry outcome.",
            [Opt("--data", help="BEIR folder or s3:// URI (corpus, queries, qrels)", kw={"required": True}),
             Opt("--shards", help="generation and labelling shards (ParallelFor)", kw={"type": POSITIVE, "default": 1}),
             Opt("--profile", help="settings under --config/--set: local (CPU, the default), gpu (METHOD.md's "
                                   "scale) or a YAML file", kw={"default": "local"}),
             Opt("--json", help="print the summary as JSON", kw={"action": "store_true"}),
             Opt("--no-plan", help="start without timing the plan first", kw={"action": "store_true"})]),
    "plan": ("what a run will process and how long each stage will take here, before running it",
             "Counts passages, queries per type, candidate and teacher pairs and training steps (prepare runs "
             "for real in a temporary folder), times small batches of each stage's real work on this machine and "
             "scales them by the counts; then the counts of the same run on --cluster-profile.",
             [Opt("--data", help="BEIR folder, corpus file or s3:// URI", kw={"required": True}),
              Opt("--profile", help="local (the default), gpu or a YAML file", kw={"default": "local"}),
              Opt("--cluster-profile", help="the profile to count for a cluster run (default gpu; '' for none)",
                  kw={"default": "gpu"})]),
    "judge": ("judge your own queries in a local web page: pooled, blinded, saved at once; export BEIR qrels",
              "Pools the top --depth passages of the base model, the candidate (--model) and BM25 for up to "
              "--max-queries queries (most disagreement first, plus a random share), shuffled and blinded, and "
              "serves a page on 127.0.0.1 to grade them 2/1/0 with the keyboard. Answers go to "
              "<out>/judgements.jsonl at once; rerun the same command to resume. --export writes the completely "
              "judged queries as queries.jsonl + qrels/test.tsv and prints base vs candidate nDCG@10.",
              [DATA, Opt("--queries", help="queries to judge: queries.jsonl ({_id, text}) or .txt, one per line "
                                           "(default <data>/queries.jsonl)"),
               Opt("--model", help="the candidate: a sentence-transformers folder", kw={"required": True}),
               Opt("--base", help="the base model (default retrieval.model)"),
               Opt("--out", help="pool and answers (default <work_dir>/judge)"),
               Opt("--port", help="port on 127.0.0.1 (default 0: a free one)", kw={"type": NON_NEGATIVE, "default": 0}),
               Opt("--max-queries", help="queries to judge (default 50)", kw={"type": POSITIVE, "default": 50}),
               Opt("--depth", help="passages pooled per system and query (default 10)",
                   kw={"type": POSITIVE, "default": 10}),
               Opt("--random-share", help="share of the queries drawn at random, not for disagreement (default 0.3)",
                   kw={"type": float, "default": 0.3}),
               Opt("--export", help="write the judged queries as BEIR files and print the figures; no page",
                   kw={"action": "store_true"}),
               Opt("--export-to", help="folder for --export and the page's export (default the --data folder)"),
               Opt("--force", help="overwrite an existing qrels/test.tsv on export", kw={"action": "store_true"}),
               Opt("--no-browser", help="do not open a browser, only print the URL", kw={"action": "store_true"})]),
    "config": ("print the effective configuration as YAML", "Print the defaults merged with --config and --set.", []),
    "export": ("export a model for use without kadet or MLflow: query/, document/, model/, ONNX, README",
               "Writes --out: query/ and document/ (plain sentence-transformers folders: the query and document "
               "encoders), model/ (the source as is), onnx/{query,document}/ (model.onnx ending in the sentence "
               "embedding, int8 copy, tokenizer), README.md with the calls, export.json. Source: --model PATH, "
               "else --version of register.model_name in the work dir's MLflow registry.",
               [Opt("--out", help="output folder", kw={"required": True}),
                Opt("--model", help="a sentence-transformers folder to export (e.g. <work_dir>/distill/model)"),
                Opt("--version", help="registry version without --model: a number, champion, challenger or "
                                      "latest (default latest)"),
                Opt("--model-name", "register.model_name"),
                Opt("--no-onnx", help="skip the ONNX files", kw={"action": "store_true"}),
                Opt("--force", help="replace --out if it exists", kw={"action": "store_true"})]),
}
_REMOTE = [Opt("--host", help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline", kw={"required": True}),
           Opt("--data", help="corpus URI as the cluster sees it (pipeline parameter data_uri)"),
           Opt("--param", help="pipeline parameter (repeatable), e.g. --param training_mode=full",
               kw={"action": "append", "default": [], "metavar": "KEY=VALUE"}),
           Opt("--experiment", help="KFP experiment (created if missing)", kw={"default": "kadet"}),
           Opt("--package", help="compiled pipeline YAML (default kadet/kubeflow/kadet_pipeline.yaml)"),
           Opt("--namespace", help="Kubeflow profile namespace (multi-user installs)"),
           Opt("--service-account", help="the pipeline pods' service account", kw={"default": "kadet-pipeline-runner"}),
           Opt("--no-cache", help="disable KFP caching for this run", kw={"action": "store_true"}),
           Opt("--token", help="bearer token (default $KFP_TOKEN)"),
           Opt("--profile", help="the pipeline's profile parameter: gpu (its default), local, '' (kadet's defaults) "
                                 "or a YAML file (its settings go into config_yaml)", kw={"metavar": "NAME|FILE"})]
_REMOTE_DOC = ("--config FILE and --set KEY=VALUE become the pipeline's config_yaml (only the settings that differ "
               "from the profile); --work-dir its work_dir, which must lie on the volume the steps mount "
               "(/var/cache/kadet). Everything is checked before the first call; a failed call is one line.")
SUBCOMMANDS["submit"] = ("start one run of the compiled pipeline on a Kubeflow Pipelines endpoint",
                         "Start one run with kfp.Client; see kadet/kubeflow/remote.py. " + _REMOTE_DOC,
                         [*_REMOTE, Opt("--run-name")])
SUBCOMMANDS["schedule"] = ("create a recurring run (cron, max_concurrency=1, no catch-up)",
                           "Create a recurring run with kfp.Client; see kadet/kubeflow/remote.py. Each time it fires: "
                           "an uncached task lists what --data holds, and if a registered version was trained on that "
                           "very content with the same settings the run trains and registers nothing (\"no change "
                           "since version N\"); with judged queries, it stops when the teacher is not measurably ahead "
                           "of the base on them (\"nothing to learn\"); otherwise it runs again, generating only for "
                           "new or changed passages "
                           "and scoring only teacher pairs no earlier run scored (kept on the cache volume); the new "
                           "model is gated against the champion on today's data and registered with its lineage. "
                           + _REMOTE_DOC,
                           [*_REMOTE, Opt("--cron", help='cron, e.g. "0 3 * * 1" (5 fields) or KFP\'s 6 fields',
                                          kw={"required": True}),
                            Opt("--name", help="recurring run name", kw={"default": "kadet-retrain"})])
SUBCOMMANDS["models"] = (
    "stage a model onto the model-cache volume or into a bucket, or print the Job that stages it in-cluster",
    "stage SRC DEST: copy a model (a packaged name, a folder, a .gguf file or an s3:// prefix) to DEST, a folder "
    "(e.g. /var/cache/kadet/models/NAME on the model-cache volume; written whole or not at all) or "
    "s3://bucket/prefix; the same model again is a no-op, anything else at DEST is refused. job SRC DEST: print a "
    "Kubernetes Job that runs `kadet models stage SRC DEST` where pipeline pods run (their Secrets, endpoints and "
    "model-cache volume, kadet/kubeflow/platform.yaml): pipe it to `kubectl create -f -`.",
    [Opt("action", help="stage: copy the model here; job: print the in-cluster Job", kw={"choices": ["stage", "job"]}),
     Opt("src", help="packaged name, folder, .gguf or s3:// prefix (job: s3:// only)", kw={"metavar": "SRC"}),
     Opt("dest", help="folder or s3://bucket/prefix (job: a path on the model-cache volume)", kw={"metavar": "DEST"}),
     Opt("--namespace", help="job: where pipeline pods run (default kubeflow)", kw={"default": "kubeflow"}),
     Opt("--image", help="job: the image (default the CPU image of --package)"),
     Opt("--package", help="job: compiled pipeline whose image the Job uses (default kadet/kubeflow/kadet_pipeline.yaml)")])
SUBCOMMANDS["data"] = ("fetch a public BEIR dataset: kadet data get NAME DIR",
                       "get: download the dataset's BEIR zip (or --url), unzip it beside DIR, check every file's "
                       "sha256 against kadet/tools/datasets.py, then move it to DIR (corpus.jsonl, queries.jsonl, "
                       "qrels/*.tsv). A failed or tampered download leaves no DIR.",
                       [Opt("action", help="get: download, verify and unpack dataset NAME into DIR",
                            kw={"choices": ["get"]}),
                        Opt("name", help="dataset (known: scifact)", kw={"metavar": "NAME"}),
                        Opt("dir", help="folder to create (must not exist, or be empty)", kw={"metavar": "DIR"}),
                        Opt("--url", help="download the zip from here instead (a mirror or local copy)")])
SUBCOMMANDS["prune"] = (
    "remove what older runs left in the work dir and refused registry versions (kadet/tools/prune.py)",
    "Keeps the newest --keep runs' KFP outputs (<work_dir>/kfp), logs and kept generation/teacher stores "
    "(<work_dir>/store), the resume logs of runs newer than the newest successful one, the newest --keep refused "
    "registry versions, and always the champion; removes the rest (a refused version with its model files where the "
    "MLflow store is local). --dry-run prints what it would remove, with sizes.",
    [Opt("--keep", "retention.keep_runs"),
     Opt("--dry-run", help="print what would be removed and its size; remove nothing", kw={"action": "store_true"})])
#: Commands whose config comes from a profile, without one kadet's defaults: METHOD.md's scale.
STAGE_COMMANDS = ("evaluate", "prepare", "generate", "mine", "label", "distill", "teacher-report")
#: Commands that read no kadet config, so they take no --profile (submit and schedule have their
#: own: the pipeline's profile parameter).
NO_CONFIG = ("submit", "schedule", "data", "models")
PROFILE_HELP = ("settings under --config/--set: local (kadet/core/profiles/local.yaml, for a CPU), gpu (METHOD.md's "
                "scale) or a YAML file (default: kadet's defaults, METHOD.md's scale)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kadet", description=(
        "kadet adapts a dense-retrieval embedding model to one corpus: synthetic queries, mined negatives, "
        "teacher labels, listwise distillation, gated MLflow registration."))
    parser.add_argument("--version", action="version", version=f"kadet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, description, options) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description)
        for opt in options:
            opt.add_to(p)
        if name not in NO_CONFIG and not any(opt.flag == "--profile" for opt in options):
            p.add_argument("--profile", metavar="NAME|FILE", help=PROFILE_HELP)
        p.add_argument("--config", metavar="FILE", help="YAML config file (defaults are in kadet/core/config.py)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set retrieval.top_k=200 (repeatable)")
        p.add_argument("--work-dir", help="working folder for outputs and caches (config: work_dir; default .kadet)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _load(args: argparse.Namespace) -> KadetConfig:
    """``--profile``, then ``--config``, then ``--set``, then the command's config shortcuts
    (``Opt.key``), validated. A stage command without ``--profile`` says, once, that it runs at
    kadet's default (paper) scale."""
    cfg = load_config(args.config, args.overrides, base=profile_config(getattr(args, "profile", None) or ""))
    if args.command in STAGE_COMMANDS and not getattr(args, "profile", None):
        print("kadet: warning: no --profile: using kadet's paper-scale defaults (METHOD.md's scale, meant for a "
              "GPU); on a CPU pass --profile local (kadet/core/profiles/local.yaml, what kadet run uses)", file=sys.stderr)
    for opt in SUBCOMMANDS[args.command][2]:
        value = getattr(args, opt.key, None) if opt.key else None
        if value is not None:
            set_path(cfg, opt.key, value)
        if opt.extends:
            get_path(cfg, opt.extends).extend(getattr(args, opt.flag.lstrip("-").replace("-", "_")))
    if getattr(args, "work_dir", None):
        cfg.work_dir = args.work_dir
    return validate(cfg, "command line")


@contextlib.contextmanager
def _fresh_output_dir(uri: str):
    """:func:`output_dir`, except that when the block fails, the folders it created and left empty
    are removed again; a folder that existed before is never removed."""
    created: list[Path] = []
    if not is_s3(uri):
        folder = Path(uri).absolute()
        while not folder.exists():
            created.append(folder)
            folder = folder.parent
    try:
        with output_dir(uri) as local:
            yield local
    except BaseException:
        for folder in created:  # innermost first; rmdir removes only an empty folder
            try:
                folder.rmdir()
            except OSError:
                break
        raise


@dataclass(frozen=True)
class StageCommand:
    """What differs between the stage subcommands; :func:`cmd_stage` does the rest: the config,
    each input (``--<input>`` or the upstream stage's output in the work dir), the output folder
    (``--output`` or ``<work_dir>/<folder>``, local or ``s3://``), the call, the summary line."""

    #: ``module:function`` of the stage, called as ``function(cfg, *inputs, output folder, **options(args))``.
    target: str
    #: The line(s) printed when it is done: ``summary(what the function returned, output, cfg, args)``.
    summary: Callable[[Any, str, KadetConfig, argparse.Namespace], str]
    #: Its inputs (names in kadet/core/layout.py), in the function's order.
    inputs: tuple[str, ...] = ()
    #: Keyword arguments of the call, from the command's own flags.
    options: Callable[[argparse.Namespace], dict] = lambda args: {}
    #: The output folder under the work dir (default: the command's name).
    folder: Callable[[KadetConfig], str] | None = None
    #: Reads ``data.data_dir``: without one it fails before anything is written.
    needs_data: bool = False
    #: A failed run removes the output folders it created and left empty (:func:`_fresh_output_dir`).
    fresh: bool = False
    #: Runs under torchrun too: rank 0 writes and prints, the other ranks train beside it.
    ranked: bool = False


def _evaluate_summary(result, out: str, cfg: KadetConfig, args: argparse.Namespace) -> str:
    from kadet.stages.evaluate import format_table

    if args.json:
        return json.dumps(result.metrics, indent=2)
    r = cfg.retrieval
    name = f"{r.retriever} ({r.model})" if r.retriever != "bm25" else "bm25"
    return (f"{format_table([(name, result.metrics)])}\n\n{len(result.per_query)} queries, split {cfg.data.split}, "
            f"{result.seconds:.1f} s; wrote {out}/metrics.json")


def _label_summary(m, out: str, cfg: KadetConfig, args: argparse.Namespace) -> str:
    if args.score_only:
        return (f"label: scored {m.counts.get('scored_now', 0)} queries in shard "
                f"{cfg.label.shard_index}/{cfg.label.num_shards}")
    return (f"label: {m.counts['labelled']} of {m.counts['queries']} queries labelled "
            f"({m.counts['train']} train / {m.counts['dev']} dev); dropped {m.dropped}; wrote {out}/labels.jsonl")


#: The stage subcommands (their flags are in SUBCOMMANDS).
STAGE_RUNS: dict[str, StageCommand] = {
    "evaluate": StageCommand("kadet.stages.evaluate:evaluate", _evaluate_summary, needs_data=True, fresh=True,
                             folder=lambda cfg: f"evaluate/{cfg.retrieval.retriever}",
                             options=lambda args: {"max_queries": args.max_queries}),
    "prepare": StageCommand("kadet.stages.prepare:prepare", lambda m, out, cfg, args: (
        f"prepare: kept {m.counts['passages']} of {m.counts['corpus']} passages; dropped {m.dropped}; wrote {out}"),
        needs_data=True, fresh=True),
    "generate": StageCommand("kadet.stages.generate:generate", lambda m, out, cfg, args: (
        f"generate: kept {m.counts['kept']} of {m.counts['finished']} outputs "
        f"({100 * m.extra['usable_fraction']:.1f}% usable); dropped {m.dropped}; wrote {out}/queries.jsonl"),
        inputs=tuple(STAGES["generate"].inputs)),
    "mine": StageCommand("kadet.stages.mine:mine", lambda m, out, cfg, args: (
        f"mine: kept {m.counts['kept']} of {m.counts['queries']} queries; dropped {m.dropped}; "
        f"round-trip hits {m.extra['round_trip_hits']}; wrote {out}/candidates.jsonl"),
        inputs=tuple(STAGES["mine"].inputs)),
    "label": StageCommand("kadet.stages.label.stage:label", _label_summary, inputs=tuple(STAGES["label"].inputs),
                          options=lambda args: {"score": not args.merge_only, "merge": not args.score_only}),
    "distill": StageCommand("kadet.stages.distill:distill", lambda m, out, cfg, args: (
        f"distill: {m.counts['epochs']} epochs, best epoch {m.extra['best_epoch']} "
        f"(dev loss {m.extra['best_dev_loss']}); wrote {out}/model"
        + (f" ({m.extra['processes']} processes)" if m.extra["processes"] > 1 else "")),
        inputs=tuple(STAGES["distill"].inputs), ranked=True, options=lambda args: {"find_champion": _find_champion}),
}


def _find_champion(cfg: KadetConfig, scratch: Path):
    """``distill.init: champion``'s lookup in the registry (the stage itself knows no registry)."""
    from kadet.registry.register import find_champion

    return find_champion(cfg, scratch)


def cmd_stage(args: argparse.Namespace) -> int:
    """A stage subcommand, as its :data:`STAGE_RUNS` entry describes it."""
    import importlib

    spec = STAGE_RUNS[args.command]
    cfg = _load(args)
    if spec.needs_data and not cfg.data.data_dir:
        raise KadetError("no data: pass --data DIR or set data.data_dir")
    work = Path(cfg.work_dir)
    out = args.output or str(work / (spec.folder(cfg) if spec.folder else args.command))
    inputs = [getattr(args, name) or input_path(work, args.command, name) for name in spec.inputs]
    module, _, function = spec.target.partition(":")
    run = getattr(importlib.import_module(module), function)
    rank = int(os.environ.get("RANK", "0")) if spec.ranked else 0
    with (_fresh_output_dir(out) if spec.fresh else output_dir_for_rank(out, rank)) as local:
        result = run(cfg, *inputs, local, **spec.options(args))
    if rank == 0:
        print(spec.summary(result, out, cfg, args))
    return 0


def cmd_teacher_report(args: argparse.Namespace) -> int:
    from kadet.tools.teacher_report import format_report, teacher_report

    cfg = _load(args)
    if not cfg.data.data_dir:
        raise KadetError("no data: pass --data DIR or set data.data_dir")
    grid = {}
    for g in args.grid:
        name, _, values = g.partition("=")
        try:
            grid[name.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            raise KadetError(f"--grid {g!r}: expected NAME=W1,W2,...") from None
    teachers = args.teacher or ["dense", "bm25", "ql", "ensemble"]
    if bad := [name for name in teachers if not names_component(name, TEACHERS)]:  # before the base model runs
        raise KadetError(f"--teacher {bad[0]!r} must be one of {', '.join(TEACHERS)}")
    report = teacher_report(cfg, teachers, args.split, args.depth, args.max_queries, grid,
                            Path(cfg.work_dir) / "teacher-report")
    print(format_report(report))
    return 0


def plan_config(args: argparse.Namespace, profile: str):
    from kadet.core.config import config_from_text
    from kadet.kubeflow.local import local_config_text

    cfg = config_from_text(local_config_text(args.config, args.overrides, profile))
    cfg.data.data_dir = args.data
    return cfg


def cmd_plan(args: argparse.Namespace) -> int:
    from kadet.tools.datasets import check_data
    from kadet.tools.plan import format_plan, make_plan

    check_data(args.data)
    print(format_plan(make_plan(plan_config(args, args.profile)), f"kadet plan: {args.data} (profile {args.profile})"))
    if args.cluster_profile:
        cluster = make_plan(plan_config(args, args.cluster_profile), measure_here=False)
        print(format_plan(cluster, f"the same corpus on the {args.cluster_profile} profile (counts; its GPU stages "
                                   "are timed by running kadet plan on a GPU node)"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kadet.tools.datasets import check_data
    from kadet.kubeflow.local import run_local

    check_data(args.data)  # before the plan and before KFP starts
    print(f"kadet run: {args.data} (profile {args.profile}, work dir {args.work_dir or '.kadet'})", flush=True,
          file=sys.stderr if args.json else sys.stdout)
    plan = None
    if not args.no_plan and not args.json:
        from kadet.tools.plan import format_plan, make_plan

        cfg = plan_config(args, args.profile)
        cfg.generate.num_shards = cfg.label.num_shards = args.shards
        plan = make_plan(cfg)
        print(format_plan(plan, "plan:"), flush=True)
    summary = run_local(args.data, args.work_dir or ".kadet", args.config, args.overrides, shards=args.shards,
                        profile=args.profile, verbose=args.verbose, console_to_stderr=args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_run_summary(summary, plan)
    return 0


def print_run_summary(summary: dict, plan=None) -> None:
    """``kadet run``'s closing lines: wall time, work done, the plan against the time taken,
    base vs candidate, the registry outcome and how to use the model."""
    from kadet.kit.comparison import SILVER_CAVEAT, display, gain_text

    print(f"kadet run: {summary['seconds'] / 60:.1f} min; MLflow {summary['tracking_uri']} "
          f"(parent run {summary['parent_run']})")
    if summary.get("unchanged_since") or summary.get("nothing_to_learn"):
        print(summary["gate"])
        return
    work = "; ".join(f"{stage} {n['new']} new, {n['reused']} reused from earlier runs"
                     for stage, n in summary.get("work", {}).items() if n["new"] + n["reused"])
    if work:
        print(f"work: {work}")
    if plan is not None:
        print("  " + " · ".join(f"{stage} {took:.0f} s (plan {planned:.0f})" for stage, took, planned
                                in planned_vs_taken(plan, summary["stages"], summary["seconds"])))
    b, c = summary["base"], summary["candidate"]
    nd, rc = summary["metrics"]
    if b and c:
        ci = summary.get("gain_ci")
        ci_text = f" ({gain_text({'mean': c[nd] - b[nd], 'ci_low': ci[0], 'ci_high': ci[1]})})" if ci else ""
        print(f"{display(nd)} ({summary['eval_kind']}) base {b[nd]:.4f} -> candidate {c[nd]:.4f}{ci_text}; "
              f"{display(rc)} {b[rc]:.4f} -> {c[rc]:.4f}")
        dense = (summary.get("retrievers") or {}).get("dense") or {}   # the lead is measured on dense
        if dense.get("base") and dense.get("candidate"):
            from kadet.stages.preflight import kept_text

            print(kept_text(summary.get("preflight") or {}, dense["candidate"][nd] - dense["base"][nd]))
    hybrid, bm25 = (summary.get("retrievers") or {}).get("hybrid") or {}, (summary.get("retrievers") or {}).get("bm25")
    if hybrid.get("base") and hybrid.get("candidate"):
        hb, hc = hybrid["base"], hybrid["candidate"]
        print(f"hybrid (dense + BM25, RRF) {display(nd)} base {hb[nd]:.4f} -> candidate {hc[nd]:.4f} "
              f"(gain {hc[nd] - hb[nd]:+.4f}); {display(rc)} {hb[rc]:.4f} -> {hc[rc]:.4f}"
              + (f"; BM25 alone {display(nd)} {bm25[nd]:.4f}" if bm25 else "")
              + f"; the gate judged {summary.get('gate_retriever', 'dense')}")
    if summary.get("eval_kind") == "silver":
        print(SILVER_CAVEAT)
    champion = f"champion is version {summary['champion']}" if summary["champion"] else "there is no champion"
    print(f"registered version {summary['version']}: {summary['gate']}; {champion}")
    if summary.get("version"):
        from kadet.registry.register import usage

        print("use it: " + "\n        ".join(usage(summary["model_name"], summary["version"], summary["tracking_uri"])))
    print(f"full output (KFP, warnings): {summary['log']}")


def planned_vs_taken(plan, stages: list[tuple[str, float]], total: float) -> list[tuple[str, float, float]]:
    """``(stage, seconds taken, seconds planned)``: the runs of one stage (shards, merge) summed;
    ``tasks`` is what the stages' own runs do not cover (task starts, KFP)."""
    taken: dict[str, float] = {}
    for name, sec in stages:
        base = name.split("-")[0]
        taken[base] = taken.get(base, 0.0) + sec
    taken["tasks"] = total - sum(sec for _, sec in stages)
    return [(s.stage, taken.get(s.stage, 0.0), s.seconds) for s in plan.stages]


def _remote_params(args: argparse.Namespace) -> tuple[str, dict]:
    """``(package, run parameters)`` of submit / schedule, all checked before any call."""
    from kadet.kubeflow.remote import package_path, parse_params, run_params

    package = package_path(args.package)
    return package, run_params(parse_params(args.param, args.data), package, args.profile, args.config,
                               args.overrides, args.work_dir)


def _package_line(package: str, params: dict) -> str:
    from kadet.kubeflow.remote import package_images

    shown = {k: v for k, v in params.items() if k != "config_yaml"}
    keys = f"; config_yaml sets {len(params['config_yaml'].splitlines())} line(s)" if "config_yaml" in params else ""
    return (f"  package {package} (images {', '.join(sorted(set(package_images(package).values())))}); "
            f"parameters {json.dumps(shown)}{keys}")


def cmd_submit(args: argparse.Namespace) -> int:
    from kadet.kubeflow.remote import submit

    package, params = _remote_params(args)
    run_id = submit(args.host, params, args.experiment, args.run_name, package, args.namespace, args.service_account,
                    not args.no_cache, args.token)
    print(f"submitted run {run_id}\n{_package_line(package, params)}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from kadet.kubeflow.remote import kfp_cron, schedule

    kfp_cron(args.cron)  # before anything else
    package, params = _remote_params(args)
    job = schedule(args.host, params, args.cron, args.name, args.experiment, package, args.namespace,
                   args.service_account, not args.no_cache, args.token)
    print(f"created recurring run {job}\n{_package_line(package, params)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "stage":
        from kadet.kit.models import stage_model

        print(stage_model(args.src, args.dest).summary(args.src))
        return 0
    import yaml

    from kadet.kubeflow.platform import Platform
    from kadet.kubeflow.remote import package_images, package_path

    image = args.image or package_images(package_path(args.package))["exec-prepare"]
    print(yaml.safe_dump(Platform.load().stage_job(image, args.src, args.dest, args.namespace), sort_keys=False), end="")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_config(_load(args)), end="")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kadet.tools.export import export_model

    cfg = _load(args)
    print(export_model(cfg, args.out, model=args.model, version=args.version, onnx=not args.no_onnx,
                       force=args.force).summary())
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from kadet.tools.judge import JudgeSettings, export, make_server, open_session, url_of

    cfg = _load(args)
    if not cfg.data.data_dir:
        raise KadetError("no data: pass --data DIR or set data.data_dir")
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

    cfg = _load(args)
    removals = prune(cfg, cfg.retention.keep_runs, dry_run=args.dry_run)
    print(format_removals(removals, args.dry_run, cfg.retention.keep_runs))
    return 0


def cmd_run_then_prune(args: argparse.Namespace) -> int:
    """``kadet run``; after a successful run with ``retention.auto``, prune what older runs left."""
    from kadet.tools.prune import auto_prune

    code = cmd_run(args)
    if code == 0 and (line := auto_prune(_load(args))):
        print(line, file=sys.stderr if args.json else sys.stdout)
    return code


def cmd_data(args: argparse.Namespace) -> int:
    from kadet.tools.datasets import get_dataset

    dest = get_dataset(args.name, args.dir, url=args.url)
    print(f"kadet data: {args.name} in {dest} (checksums verified)")
    return 0


#: Commands that do not write to the work dir, so they take no lock on it. ``judge`` takes it
#: itself, only while it builds a pool (see cmd_judge).
UNLOCKED = ("config", "plan", "submit", "schedule", "judge", "data", "export", "models")
COMMANDS = {
    "data": cmd_data,
    **{name: cmd_stage for name in STAGE_RUNS}, "plan": cmd_plan, "teacher-report": cmd_teacher_report,
    "config": cmd_config,
    "run": cmd_run_then_prune, "prune": cmd_prune,
    "submit": cmd_submit, "schedule": cmd_schedule, "judge": cmd_judge, "export": cmd_export, "models": cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    offline_env()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "urllib3", "sentence_transformers", "bm25s", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command in UNLOCKED or int(os.environ.get("RANK", "0")) > 0:  # torchrun ranks > 0: rank 0 holds it
            return COMMANDS[args.command](args)
        work_dir = args.work_dir or load_config(args.config, args.overrides,
                                                base=profile_config(getattr(args, "profile", None) or "")).work_dir
        with work_dir_lock(work_dir, f"kadet {args.command}"):
            return COMMANDS[args.command](args)
    except KadetError as exc:
        if args.verbose:  # -v: where it was raised, too
            import traceback

            traceback.print_exc()
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

