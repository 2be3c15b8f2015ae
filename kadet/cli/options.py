"""The flags of the ``kadet`` subcommands: :class:`Opt`, the argparse integer types and the flags
several commands share."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kadet.core.config import CHOICES, RANGES, KadetConfig, field_docs, get_path
from kadet.core.layout import STAGES


def _count(low: int, high: int | None = None):
    """An argparse type: an integer >= ``low`` (and <= ``high``, when given): a clear usage error
    otherwise, never a traceback."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} must be <= {high}")
        return value
    parse.__name__ = f"integer >= {low}" if high is None else f"integer {low}-{high}"
    return parse


POSITIVE, NON_NEGATIVE = _count(1), _count(0)
#: A TCP port, or 0 for a free one.
PORT = _count(0, 65535)


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
#: The ``--profile`` of every command that reads a kadet config and has no ``--profile`` of its own.
PROFILE_HELP = ("settings under --config/--set: local (kadet/core/profiles/local.yaml, for a CPU), gpu (METHOD.md's "
                "scale) or a YAML file (default: kadet's defaults, METHOD.md's scale)")
