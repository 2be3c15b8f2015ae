"""The ``kadet`` command line: one subcommand per stage; parses options, calls the library.

Every subcommand takes ``--config FILE`` (YAML, see :mod:`kadet.core.config`) and any number of
``--set section.key=value`` overrides; its own flags are shortcuts for the common keys.

Each subcommand is one :class:`~kadet.cli.command.Command` record in :data:`COMMANDS` (its help,
flags, whether it reads a config, whether it takes the work-dir lock, its handler); the parser and
the dispatch in :func:`main` are built from that table. The records live beside their handlers:
kadet/cli/stages.py (the stages, teacher-report), pipeline.py (run, plan), tools.py (judge, config,
export, data, prune), registry.py (gate, promote), cluster.py (submit, schedule, models).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable

from kadet import __version__
from kadet.cli.cluster import CLUSTER_COMMANDS
from kadet.cli.command import Command
from kadet.cli.command import load as _load
from kadet.cli.options import Opt
from kadet.cli.pipeline import PIPELINE_COMMANDS, plan_config, planned_vs_taken, print_run_summary
from kadet.cli.registry import REGISTRY_COMMANDS
from kadet.cli.stages import STAGE_COMMANDS
from kadet.cli.tools import CONFIG, DATASETS, EXPORT, JUDGE, PRUNE
from kadet.core.config import load_config, profile_config
from kadet.core.errors import KadetError
from kadet.core.storage import work_dir_lock
from kadet.kit.models import offline_env

__all__ = ["COMMANDS", "Command", "Opt", "build_parser", "main", "plan_config", "planned_vs_taken",
           "print_run_summary", "_load"]

log = logging.getLogger("kadet")


def _by_name(commands: Iterable[Command]) -> dict[str, Command]:
    """``{name: record}`` in ``kadet --help``'s order; a name given twice is a bug."""
    table: dict[str, Command] = {}
    for command in commands:
        if command.name in table:
            raise ValueError(f"two records for kadet {command.name}")
        table[command.name] = command
    return table


#: Every subcommand, once, in ``kadet --help``'s order.
COMMANDS: dict[str, Command] = _by_name((*STAGE_COMMANDS, *PIPELINE_COMMANDS, JUDGE, *REGISTRY_COMMANDS, CONFIG, EXPORT,
                                         *CLUSTER_COMMANDS, DATASETS, PRUNE))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kadet", description=(
        "kadet adapts a dense-retrieval embedding model to one corpus: synthetic queries, mined negatives, "
        "teacher labels, listwise distillation, gated MLflow registration."))
    parser.add_argument("--version", action="version", version=f"kadet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        command.add_to(sub)
    return parser


def _run(command: Command, args: argparse.Namespace) -> int:
    """``command``'s handler, under the work dir's lock if the command takes it (torchrun ranks > 0
    never do: rank 0 holds it). The work dir is resolved once, here (``--work-dir``, else the
    config's ``work_dir`` from ``--profile``, ``--config`` and ``--set``), and handed to the
    handler as ``args.work_dir``: the lock is on the folder the command then uses."""
    if not command.locks or int(os.environ.get("RANK", "0")) > 0:
        return command.run(args)
    args.work_dir = args.work_dir or load_config(args.config, args.overrides,
                                                 base=profile_config(getattr(args, "profile", None) or "")).work_dir
    with work_dir_lock(args.work_dir, f"kadet {args.command}"):
        return command.run(args)


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
        return _run(args._command, args)
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
