"""The registry subcommands: ``kadet gate`` (a registered version gated again on the judged queries
as they are now) and ``kadet promote`` (a person's decision); kadet/registry/promotion.py does the work."""

from __future__ import annotations

import argparse

from kadet.cli.command import Command, load
from kadet.cli.options import DATA, Opt


def cmd_gate(args: argparse.Namespace) -> int:
    """Exit status 0 when the version is promoted, 1 when the gate refuses (the reasons are printed)."""
    from kadet.core.storage import mask_uri
    from kadet.registry.promotion import mlflow_access, regate
    from kadet.registry.tracking import tracking_uri

    cfg = load(args)
    print(f"kadet gate: {cfg.register.model_name} {args.version} in {mask_uri(tracking_uri(cfg))}", flush=True)
    with mlflow_access(cfg):
        result = regate(cfg, args.version)
    print(result.summary())
    return 0 if result.promoted else 1


def cmd_promote(args: argparse.Namespace) -> int:
    from kadet.registry.promotion import mlflow_access, promote_by_hand

    cfg = load(args)
    with mlflow_access(cfg):
        result = promote_by_hand(cfg, args.version, args.reason, to=args.to, by=args.by or "", force=args.force)
    print(result.summary())
    return 0


MODEL_NAME = Opt("--model-name", "register.model_name")
GATE = Command(
    "gate", "gate a registered version again on the judged queries as they are now; promote it if it passes",
    "Measures registry version --version (a number or challenger) and its base model on --data as it is now "
    "(e.g. the folder kadet judge exported to: queries.jsonl + qrels/test.tsv), decides with the pipeline's gate "
    "(register.* settings) against the current champion, evaluated again on the same queries, and promotes it if it "
    "passes (compare-and-set); else prints why and leaves the aliases. Nothing is trained. Exit status 0: promoted, "
    "1: refused. Logged as an MLflow run 'gate'; the version's tags kadet.regate and kadet.gate_failure say the outcome.",
    cmd_gate,
    (DATA, Opt("--version", help="the registered version: a number or challenger", kw={"required": True}),
     MODEL_NAME,
     Opt("--profile", help="settings under --config/--set: local (CPU, the default, as kadet run), gpu or a YAML file",
         kw={"default": "local"})))
PROMOTE = Command(
    "promote", "a person's decision: point the champion (or challenger) alias at a version, recorded on it",
    "Points --to (champion, the default, or challenger) at --version as a compare-and-set, and records on the "
    "version who (--by, else $MLFLOW_TRACKING_USERNAME, else your login), when, why (--reason) and the figures it "
    "had (tags kadet.manual.*); the other alias leaves it, and as champion its failed-gate tag goes. Refuses a "
    "version trained on other documents than --data (else the champion's corpus) unless --force. Works against a "
    "remote MLflow with auth (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN; never printed).",
    cmd_promote,
    (Opt("--version", help="the registered version: a number, challenger or champion", kw={"required": True}),
     Opt("--reason", help="why (recorded on the version)", kw={"required": True}),
     Opt("--to", help="the alias to move (default champion)", kw={"choices": ["champion", "challenger"],
                                                                  "default": "champion"}),
     Opt("--by", help="who decides (default $MLFLOW_TRACKING_USERNAME, else your login name)"),
     Opt("--force", help="promote even a version trained on other documents; make the champion challenger",
         kw={"action": "store_true"}),
     DATA, MODEL_NAME),
    locks=False)
REGISTRY_COMMANDS = (GATE, PROMOTE)
