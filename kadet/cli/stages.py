"""The stage subcommands (evaluate, prepare, generate, mine, label, distill) and teacher-report:
each calls one stage of kadet/stages on its inputs in the work dir and prints a summary."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kadet.cli.command import Command, load, need_data
from kadet.cli.options import DATA, POSITIVE, Opt, _inputs, _output, _types
from kadet.core.config import TEACHERS, KadetConfig, names_component
from kadet.core.errors import KadetError
from kadet.core.layout import STAGES, input_path
from kadet.core.storage import is_s3, output_dir, output_dir_for_rank

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
class StageRun:
    """The handler of a stage subcommand: the config, each input (``--<input>`` or the upstream
    stage's output in the work dir), the output folder (``--output`` or ``<work_dir>/<folder>``,
    local or ``s3://``), the call, the summary line."""

    #: The stage, called as ``stage(cfg, *inputs, output folder, **options(args))``.
    stage: Callable[..., Any]
    #: The line(s) printed when it is done: ``summary(what the stage returned, output, cfg, args)``.
    summary: Callable[[Any, str, KadetConfig, argparse.Namespace], str]
    #: Its inputs (names in kadet/core/layout.py), in the stage's order.
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

    def __call__(self, args: argparse.Namespace) -> int:
        cfg = load(args)
        if self.needs_data:
            need_data(cfg)
        work = Path(cfg.work_dir)
        out = args.output or str(work / (self.folder(cfg) if self.folder else args.command))
        inputs = [getattr(args, name) or input_path(work, args.command, name) for name in self.inputs]
        rank = int(os.environ.get("RANK", "0")) if self.ranked else 0
        with (_fresh_output_dir(out) if self.fresh else output_dir_for_rank(out, rank)) as local:
            result = self.stage(cfg, *inputs, local, **self.options(args))
        if rank == 0:
            print(self.summary(result, out, cfg, args))
        return 0


# the stages, imported when called (torch and friends are slow to import)
def _evaluate(*args, **kwargs):
    from kadet.stages.evaluate import evaluate

    return evaluate(*args, **kwargs)


def _prepare(*args, **kwargs):
    from kadet.stages.prepare import prepare

    return prepare(*args, **kwargs)


def _generate(*args, **kwargs):
    from kadet.stages.generate import generate

    return generate(*args, **kwargs)


def _mine(*args, **kwargs):
    from kadet.stages.mine import mine

    return mine(*args, **kwargs)


def _label(*args, **kwargs):
    from kadet.stages.label.stage import label

    return label(*args, **kwargs)


def _distill(*args, **kwargs):
    from kadet.stages.distill import distill

    return distill(*args, **kwargs)


def _find_champion(cfg: KadetConfig, scratch: Path):
    """``distill.init: champion``'s lookup in the registry (the stage itself knows no registry)."""
    from kadet.registry.register import find_champion

    return find_champion(cfg, scratch)


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


def cmd_teacher_report(args: argparse.Namespace) -> int:
    from kadet.tools.teacher_report import format_report, teacher_report

    cfg = load(args)
    need_data(cfg)
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


STAGE_COMMANDS = (
    Command("evaluate", "nDCG@10 / Recall@100 / MRR@10 of a retriever on a BEIR folder",
            "Retrieve for the judged queries of one split and score the run with trec_eval (pytrec_eval). "
            "Prints a table and writes metrics.json, per_query.json, run.tsv and manifest.json to --output.",
            StageRun(_evaluate, _evaluate_summary, needs_data=True, fresh=True,
                     folder=lambda cfg: f"evaluate/{cfg.retrieval.retriever}",
                     options=lambda args: {"max_queries": args.max_queries}),
            (DATA, Opt("--model", "retrieval.model"), Opt("--retriever", "retrieval.retriever"),
             Opt("--split", "data.split"), Opt("--top-k", "retrieval.top_k", "documents retrieved per query"),
             Opt("--max-queries", help="evaluate only the first N judged queries", kw={"type": POSITIVE}),
             _output("evaluate/<retriever>"),
             Opt("--json", help="print metrics as JSON instead of a table", kw={"action": "store_true"})),
            paper_scale=True),
    Command("prepare", "select passages: clean, dedupe, exclude evaluation positives, sample",
            "Reads a BEIR folder (or a corpus .jsonl/.parquet), drops empty and short passages, exact and "
            "near-duplicates, and every passage judged relevant in the evaluation qrels, then samples "
            "prepare.sample_size passages (seeded). Writes passages.jsonl, corpus.jsonl and manifest.json.",
            StageRun(_prepare, lambda m, out, cfg, args: (
                f"prepare: kept {m.counts['passages']} of {m.counts['corpus']} passages; dropped {m.dropped}; "
                f"wrote {out}"), needs_data=True, fresh=True),
            (DATA, Opt("--sample-size", "prepare.sample_size"),
             Opt("--exclude-qrels", help="extra qrels file whose relevant passages are excluded (repeatable)",
                 kw={"action": "append", "default": [], "metavar": "TSV"}, extends="prepare.exclude_qrels"),
             _output("prepare")),
            paper_scale=True),
    Command("generate", "synthetic queries of several types per passage (local model or TGI endpoint)",
            "Generates generate.types queries per passage, cleans them and writes queries.jsonl + "
            "manifest.json. Resumable: rerun the same command after a crash and it continues.",
            StageRun(_generate, lambda m, out, cfg, args: (
                f"generate: kept {m.counts['kept']} of {m.counts['finished']} outputs "
                f"({100 * m.extra['usable_fraction']:.1f}% usable); dropped {m.dropped}; wrote {out}/queries.jsonl"),
                inputs=tuple(STAGES["generate"].inputs)),
            (*_inputs("generate"), Opt("--backend", "generate.backend"),
             Opt("--types", "generate.types", "comma-separated query types, one query per passage each", _types),
             Opt("--max-passages", "generate.max_passages"), Opt("--model", "generate.model"),
             Opt("--tgi-url", "generate.tgi.url", "endpoint for --backend tgi"),
             Opt("--concurrency", "generate.tgi.concurrency", "tgi: requests in flight"), _output("generate")),
            paper_scale=True),
    Command("mine", "candidate lists per synthetic query: dense + BM25, round-trip filter, RRF",
            "Retrieves per retriever over the clean corpus, keeps a query only if its source passage comes "
            "back (mine.round_trip), fuses with RRF and writes candidates.jsonl + manifest.json.",
            StageRun(_mine, lambda m, out, cfg, args: (
                f"mine: kept {m.counts['kept']} of {m.counts['queries']} queries; dropped {m.dropped}; "
                f"round-trip hits {m.extra['round_trip_hits']}; wrote {out}/candidates.jsonl"),
                inputs=tuple(STAGES["mine"].inputs)),
            (*_inputs("mine"), _output("mine")),
            paper_scale=True),
    Command("label", "teacher scores for each candidate list, then consistency/percentile/normalise/top-L/split",
            "Scores the candidate lists with label.teacher (sharded by query range with label.shard_index / "
            "label.num_shards, resumable), then merges the shards and writes labels.jsonl + manifest.json. "
            "--score-only / --merge-only split the two steps.",
            StageRun(_label, _label_summary, inputs=tuple(STAGES["label"].inputs),
                     options=lambda args: {"score": not args.merge_only, "merge": not args.score_only}),
            (*_inputs("label"), Opt("--teacher", "label.teacher"),
             Opt("--score-only", help="score this shard, do not merge", kw={"action": "store_true"}),
             Opt("--merge-only", help="merge the shards' scores and filter", kw={"action": "store_true"}),
             _output("label")),
            paper_scale=True),
    Command("distill", "train the embedding model on labels.jsonl (listwise KL + InfoNCE, GradCache)",
            "Trains retrieval.model on the labels: distill.loss listwise or infonce, distill.mode full or "
            "query. Checkpoints every epoch; rerunning resumes. Writes model/, curves.json, manifest.json.",
            StageRun(_distill, lambda m, out, cfg, args: (
                f"distill: {m.counts['epochs']} epochs, best epoch {m.extra['best_epoch']} "
                f"(dev loss {m.extra['best_dev_loss']}); wrote {out}/model"
                + (f" ({m.extra['processes']} processes)" if m.extra["processes"] > 1 else "")),
                inputs=tuple(STAGES["distill"].inputs), ranked=True,
                options=lambda args: {"find_champion": _find_champion}),
            (*_inputs("distill"), Opt("--mode", "distill.mode"), Opt("--loss", "distill.loss"),
             Opt("--epochs", "distill.epochs"), Opt("--init", "distill.init"), _output("distill")),
            paper_scale=True),
    Command("teacher-report", "nDCG@10 of each teacher reranking the base model's top-k for human queries",
            "Reranks the base dense model's top --depth for the judged queries of --split with each "
            "--teacher and prints nDCG@10; --grid name=w1,w2 scores ensemble weights (choose them on "
            "a split other than test).",
            cmd_teacher_report,
            (DATA, Opt("--teacher", help="a teacher (repeatable; default dense, bm25, ql, ensemble)",
                       kw={"action": "append", "default": []}),
             Opt("--split", help="qrels split (default test)", kw={"default": "test"}),
             Opt("--depth", help="rerank this many base results", kw={"type": POSITIVE, "default": 20}),
             Opt("--max-queries", help="only the first N judged queries", kw={"type": POSITIVE}),
             Opt("--grid", help="ensemble member weights to try (repeatable)",
                 kw={"action": "append", "default": [], "metavar": "NAME=W1,W2"})),
            paper_scale=True),
)
