"""One record per ``kadet`` subcommand (:class:`Command`) and what the handlers share: the config
a command's flags describe (:func:`load`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from kadet.cli.options import PROFILE_HELP, Opt
from kadet.core.config import KadetConfig, get_path, load_config, profile_config, set_path, validate
from kadet.core.errors import KadetError


@dataclass(frozen=True)
class Command:
    """Everything about one subcommand: the parser, the work-dir lock and the dispatch in
    :func:`kadet.cli.main` are all built from these records. Every subcommand also takes
    ``--config``, ``--set``, ``--work-dir`` and ``-v``."""

    name: str
    #: The line in ``kadet --help``.
    help: str
    #: The text of ``kadet NAME --help``.
    description: str
    #: The handler, called with the parsed arguments; returns the exit code.
    run: Callable[[argparse.Namespace], int]
    #: Its own flags, in --help's order.
    opts: tuple[Opt, ...] = ()
    #: Reads a kadet config, so it takes ``--profile`` (unless one of ``opts`` is its own).
    config: bool = True
    #: ``main`` holds the work dir's lock while it runs; a command that writes nothing there runs
    #: without it (``judge`` takes it itself, only while it builds a pool).
    locks: bool = True
    #: Its config comes from a profile, without one kadet's defaults: ``load`` warns that it runs at
    #: METHOD.md's (paper) scale.
    paper_scale: bool = False

    def add_to(self, sub) -> argparse.ArgumentParser:
        """Its parser, under ``sub`` (the subparsers action); the parsed arguments carry the record
        itself as ``_command``."""
        p = sub.add_parser(self.name, help=self.help, description=self.description)
        for opt in self.opts:
            opt.add_to(p)
        if self.config and not any(opt.flag == "--profile" for opt in self.opts):
            p.add_argument("--profile", metavar="NAME|FILE", help=PROFILE_HELP)
        p.add_argument("--config", metavar="FILE", help="YAML config file (defaults are in kadet/core/config.py)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set retrieval.top_k=200 (repeatable)")
        p.add_argument("--work-dir", help="working folder for outputs and caches (config: work_dir; default .kadet)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.set_defaults(_command=self)
        return p


def load(args: argparse.Namespace) -> KadetConfig:
    """``--profile``, then ``--config``, then ``--set``, then the command's config shortcuts
    (``Opt.key``), validated. A stage command without ``--profile`` says, once, that it runs at
    kadet's default (paper) scale."""
    command: Command = args._command
    cfg = load_config(args.config, args.overrides, base=profile_config(getattr(args, "profile", None) or ""))
    if command.paper_scale and not getattr(args, "profile", None):
        print("kadet: warning: no --profile: using kadet's paper-scale defaults (METHOD.md's scale, meant for a "
              "GPU); on a CPU pass --profile local (kadet/core/profiles/local.yaml, what kadet run uses)", file=sys.stderr)
    for opt in command.opts:
        value = getattr(args, opt.key, None) if opt.key else None
        if value is not None:
            set_path(cfg, opt.key, value)
        if opt.extends:
            get_path(cfg, opt.extends).extend(getattr(args, opt.flag.lstrip("-").replace("-", "_")))
    if getattr(args, "work_dir", None):
        cfg.work_dir = args.work_dir
    return validate(cfg, "command line")


def need_data(cfg: KadetConfig) -> None:
    """Fails before anything is written when the command reads ``data.data_dir`` and there is none."""
    if not cfg.data.data_dir:
        raise KadetError("no data: pass --data DIR or set data.data_dir")
