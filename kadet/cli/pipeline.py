"""``kadet run`` (the whole pipeline on this machine) and ``kadet plan`` (what a run will process
and how long it will take), and the summary a run prints."""

from __future__ import annotations

import argparse
import json
import sys

from kadet.core.storage import mask_uri
from kadet.cli.command import Command, load
from kadet.cli.options import POSITIVE, Opt


def run_config(args: argparse.Namespace, profile: str):
    """The run's config, resolved once: the profile, then ``--config``, then ``--set``."""
    from kadet.core.config import load_config, profile_config

    return load_config(args.config, args.overrides, base=profile_config(profile))


def plan_config(args: argparse.Namespace, profile: str, cfg=None):
    """What ``kadet plan`` measures: a copy of the run's config (``cfg``, else resolved here) on ``--data``."""
    import copy

    cfg = copy.deepcopy(cfg) if cfg is not None else run_config(args, profile)
    cfg.data.data_dir = args.data
    return cfg


def cmd_plan(args: argparse.Namespace) -> int:
    from kadet.tools.datasets import check_data
    from kadet.tools.plan import format_plan, make_plan

    check_data(args.data)
    plan = make_plan(plan_config(args, args.profile))
    print(format_plan(plan, f"kadet plan: {args.data} (profile {args.profile})"))
    if args.scale:
        from kadet.core.config import profile_config
        from kadet.tools.plan import SCALE_SIZES, format_scale, load_scale_costs, scale_rows

        costs = load_scale_costs()
        plan.rates["distill_batch"] = plan_config(args, args.profile).distill.batch_size
        sizes = tuple(args.passages) or SCALE_SIZES
        rows = [r for name in ("local", "gpu") for r in scale_rows(name, profile_config(name), costs, plan.rates, sizes)]
        print(format_scale(rows, costs, plan.machine, args.hours))
    if args.cluster_profile:
        cluster = make_plan(plan_config(args, args.cluster_profile), measure_here=False)
        print(format_plan(cluster, f"the same corpus on the {args.cluster_profile} profile (counts; its GPU stages "
                                   "are timed by running kadet plan on a GPU node)"))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from kadet.kubeflow.local import run_local
    from kadet.tools.datasets import check_data

    check_data(args.data)  # before the plan and before KFP starts
    print(f"kadet run: {args.data} (profile {args.profile}, work dir {args.work_dir})", flush=True,
          file=sys.stderr if args.json else sys.stdout)
    resolved = run_config(args, args.profile)
    plan = None
    if not args.no_plan and not args.json:
        from kadet.tools.plan import format_plan, make_plan

        cfg = plan_config(args, args.profile, resolved)
        cfg.generate.num_shards = cfg.label.num_shards = args.shards
        plan = make_plan(cfg)
        print(format_plan(plan, "plan:"), flush=True)
    summary = run_local(args.data, args.work_dir, shards=args.shards, profile=args.profile,
                        verbose=args.verbose, console_to_stderr=args.json, resolved=resolved, runner=args.runner,
                        image=args.image)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_run_summary(summary, plan)
    return 0


def cmd_run_then_prune(args: argparse.Namespace) -> int:
    """``kadet run``; after a successful run with ``retention.auto``, prune what older runs left."""
    from kadet.tools.prune import auto_prune

    code = cmd_run(args)
    if code == 0 and (line := auto_prune(load(args))):
        print(line, file=sys.stderr if args.json else sys.stdout)
    return code


def print_run_summary(summary: dict, plan=None) -> None:
    """``kadet run``'s closing lines: wall time, work done, the plan against the time taken,
    base vs candidate, the registry outcome and how to use the model."""
    from kadet.kit.comparison import SILVER_CAVEAT, display, gain_text

    print(f"kadet run: {summary['seconds'] / 60:.1f} min; MLflow {mask_uri(summary['tracking_uri'])} "
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


PIPELINE_COMMANDS = (
    Command("run", "run the whole pipeline locally (KFP SubprocessRunner, MLflow in <work_dir>)",
            "Runs the kadet DAG (the one compiled to kadet/kubeflow/kadet_pipeline.yaml) on this machine with "
            "kfp.local.SubprocessRunner. Defaults: kadet/core/profiles/local.yaml (a CPU profile), packaged models, "
            "offline, MLflow under --work-dir (default .kadet). Prints the wall time per stage, base vs candidate "
            "nDCG@10 and the registry outcome.",
            cmd_run_then_prune,
            (Opt("--data", help="BEIR folder or s3:// URI (corpus, queries, qrels)", kw={"required": True}),
             Opt("--shards", help="generation and labelling shards (ParallelFor)", kw={"type": POSITIVE, "default": 1}),
             Opt("--profile", help="settings under --config/--set: local (CPU, the default), gpu (METHOD.md's "
                                   "scale) or a YAML file", kw={"default": "local"}),
             Opt("--json", help="print the summary as JSON", kw={"action": "store_true"}),
             Opt("--no-plan", help="start without timing the plan first", kw={"action": "store_true"}),
             Opt("--runner", help="subprocess: each task a process here; docker: each task in the component image "
                                  "(uid 10001, read-only root, only the work dir and the data mounted), as on a "
                                  "cluster", kw={"choices": ("subprocess", "docker"), "default": "subprocess"}),
             Opt("--image", help="the component image of --runner docker (default: what `make -C images local` "
                                 "builds, localhost/kadet:VERSION-cpu)"))),
    Command("plan", "what a run will process and how long each stage will take here, before running it",
            "Counts passages, queries per type, candidate and teacher pairs and training steps (prepare runs "
            "for real in a temporary folder), times small batches of each stage's real work on this machine and "
            "scales them by the counts; then the counts of the same run on --cluster-profile.",
            cmd_plan,
            (Opt("--data", help="BEIR folder, corpus file or s3:// URI", kw={"required": True}),
             Opt("--profile", help="local (the default), gpu or a YAML file", kw={"default": "local"}),
             Opt("--cluster-profile", help="the profile to count for a cluster run (default gpu; '' for none)",
                 kw={"default": "gpu"}),
             Opt("--scale", help="then each stage's time and memory at 100k, 1M and 10M passages on the local and gpu "
                                 "profiles (docs/scale.md), and the pods that fit a run in --hours",
                 kw={"action": "store_true"}),
             Opt("--passages", help="with --scale: these corpus sizes instead (repeatable)",
                 kw={"type": int, "action": "append", "default": []}),
             Opt("--hours", help="with --scale: the time a run should fit in (default 24)",
                 kw={"type": float, "default": 24.0})),
            locks=False),
)
