"""The cluster subcommands: submit and schedule (create, list, pause, resume, delete) on a Kubeflow
Pipelines endpoint, and models (stage a model onto the model-cache volume or into a bucket). None
reads a kadet config of its own."""

from __future__ import annotations

import argparse
import json

from kadet.cli.command import Command
from kadet.cli.options import Opt


def _remote_params(args: argparse.Namespace) -> tuple[str, dict, str]:
    """``(package, run parameters, where the model name came from)`` of submit / schedule, all
    checked before any call; the registered model's name is the corpus' own unless set."""
    from kadet.kubeflow.remote import package_path, parse_params, run_params, with_model_name

    package = package_path(args.package)
    params = run_params(parse_params(args.param, args.data), package, args.profile, args.config, args.overrides,
                        args.work_dir)
    params, model, source = with_model_name(params, args.model_name)
    return package, params, f"  registers model {model} ({source})"


def _package_line(package: str, params: dict) -> str:
    from kadet.kubeflow.remote import package_images

    shown = {k: v for k, v in params.items() if k != "config_yaml"}
    keys = f"; config_yaml sets {len(params['config_yaml'].splitlines())} line(s)" if "config_yaml" in params else ""
    return (f"  package {package} (images {', '.join(sorted(set(package_images(package).values())))}); "
            f"parameters {json.dumps(shown)}{keys}")


def cmd_submit(args: argparse.Namespace) -> int:
    from kadet.kubeflow.remote import submit

    package, params, model = _remote_params(args)
    run_id = submit(args.host, params, args.experiment, args.run_name, package, args.namespace, args.service_account,
                    not args.no_cache, args.token)
    print(f"submitted run {run_id}{' (uncached version)' if args.no_cache else ''}\n{model}\n"
          f"{_package_line(package, params)}")
    return 0


def _schedule_name(args: argparse.Namespace) -> str | None:
    from kadet.kubeflow.remote import default_name

    return args.name or (default_name(args.data) if args.data else None)


def cmd_schedule(args: argparse.Namespace) -> int:
    from kadet.kubeflow.remote import TIMEZONE_NOTE, kfp_cron, manage_schedule, schedule

    if args.action != "create":
        found = manage_schedule(args.host, args.action, _schedule_name(args), args.experiment, args.namespace,
                                args.token)
        if args.action == "list":
            print(f"{len(found)} schedule(s) in experiment {args.experiment!r}; crons run {TIMEZONE_NOTE}")
        done = {"list": "", "pause": "paused ", "resume": "resumed ", "delete": "deleted "}[args.action]
        for info in found:
            print(f"{done}{info.line()}")
        return 0
    if not args.cron:
        from kadet.core.errors import KadetError

        raise KadetError("kadet schedule: --cron is required to create a schedule (list | pause | resume | delete "
                         "need none)")
    cron6 = kfp_cron(args.cron)  # before anything else
    package, params, model = _remote_params(args)
    name = _schedule_name(args)
    job, what = schedule(args.host, params, args.cron, name, args.experiment, package, args.namespace,
                         args.service_account, not args.no_cache, args.token, args.replace)
    print(f"{what} schedule {name} (recurring run {job}): cron {cron6!r} (seconds first) {TIMEZONE_NOTE}"
          f"\n{model}\n{_package_line(package, params)}")
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


_REMOTE = (Opt("--host", help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline", kw={"required": True}),
           Opt("--data", help="corpus URI as the cluster sees it (pipeline parameter data_uri)"),
           Opt("--param", help="pipeline parameter (repeatable), e.g. --param training_mode=full",
               kw={"action": "append", "default": [], "metavar": "KEY=VALUE"}),
           Opt("--experiment", help="KFP experiment (created if missing)", kw={"default": "kadet"}),
           Opt("--package", help="compiled pipeline YAML (default kadet/kubeflow/kadet_pipeline.yaml)"),
           Opt("--namespace", help="Kubeflow profile namespace (multi-user installs)"),
           Opt("--service-account", help="the pipeline pods' service account", kw={"default": "kadet-pipeline-runner"}),
           Opt("--no-cache", help="run with KFP's cache off on every task (uploads the package with caching off as "
                                  "a version of its own)", kw={"action": "store_true"}),
           Opt("--model-name", help="the MLflow registered model (pipeline parameter model_name; default "
                                    "kadet-<corpus>, from the last part of --data, unless --param or --config/--set "
                                    "name one)"),
           Opt("--token", help="bearer token (default $KFP_TOKEN)"),
           Opt("--profile", help="the pipeline's profile parameter: gpu (its default), local, '' (kadet's defaults) "
                                 "or a YAML file (its settings go into config_yaml)", kw={"metavar": "NAME|FILE"}))
_REMOTE_DOC = ("--config FILE and --set KEY=VALUE become the pipeline's config_yaml (only the settings that differ "
               "from the profile); --work-dir its work_dir, which must lie on the volume the steps mount "
               "(/var/cache/kadet). Everything is checked before the first call; a failed call is one line.")
#: submit and schedule read no kadet config themselves (their --profile is the pipeline's parameter).
CLUSTER_COMMANDS = (
    Command("submit", "start one run of the compiled pipeline on a Kubeflow Pipelines endpoint",
            "Start one run with kfp.Client; see kadet/kubeflow/remote.py. " + _REMOTE_DOC,
            cmd_submit, (*_REMOTE, Opt("--run-name")), config=False, locks=False),
    Command("schedule", "create, list, pause, resume or delete a recurring run (one per corpus)",
            "Create a recurring run with kfp.Client (cron, max_concurrency=1, no catch-up), one per corpus: "
            "schedule and registered model are named kadet-<corpus> unless --name / --model-name say otherwise, "
            "and a schedule of that name with other settings is replaced only with --replace; `kadet schedule "
            "list | pause | resume | delete` manage them. See kadet/kubeflow/remote.py. Each time it fires: "
            "an uncached task lists what --data holds, and if a registered version was trained on that "
            "very content with the same settings the run trains and registers nothing (\"no change "
            "since version N\"); with judged queries, it stops when the teacher is not measurably ahead "
            "of the base on them (\"nothing to learn\"); otherwise it runs again, generating only for "
            "new or changed passages "
            "and scoring only teacher pairs no earlier run scored (kept on the cache volume); the new "
            "model is gated against the champion on today's data and registered with its lineage. "
            + _REMOTE_DOC,
            cmd_schedule,
            (Opt("action", help="create (the default: needs --data and --cron), list, pause, resume or delete "
                                "(the schedule --name names, else the one of --data's corpus)",
                 kw={"nargs": "?", "default": "create", "choices": ["create", "list", "pause", "resume", "delete"]}),
             *_REMOTE,
             Opt("--cron", help='cron, e.g. "0 3 * * 1" (5 fields) or KFP\'s 6 fields, in the KFP scheduler\'s '
                                'timezone (its pipeline-install-config cronScheduleTimezone; UTC as KFP installs it)'),
             Opt("--name", help="schedule name (default kadet-<corpus>, from the last part of --data)"),
             Opt("--replace", help="replace a schedule of that name whose version, cron or parameters differ "
                                   "(without it, refused)", kw={"action": "store_true"})),
            config=False, locks=False),
    Command(
        "models",
        "stage a model onto the model-cache volume or into a bucket, or print the Job that stages it in-cluster",
        "stage SRC DEST: copy a model (a packaged name, a folder, a .gguf file or an s3:// prefix) to DEST, a folder "
        "(e.g. /var/cache/kadet/models/NAME on the model-cache volume; written whole or not at all) or "
        "s3://bucket/prefix; the same model again is a no-op, anything else at DEST is refused. job SRC DEST: print "
        "a Kubernetes Job that runs `kadet models stage SRC DEST` where pipeline pods run (their Secrets, endpoints "
        "and model-cache volume, kadet/kubeflow/platform.yaml): pipe it to `kubectl create -f -`.",
        cmd_models,
        (Opt("action", help="stage: copy the model here; job: print the in-cluster Job", kw={"choices": ["stage", "job"]}),
         Opt("src", help="packaged name, folder, .gguf or s3:// prefix (job: s3:// only)", kw={"metavar": "SRC"}),
         Opt("dest", help="folder or s3://bucket/prefix (job: a path on the model-cache volume)", kw={"metavar": "DEST"}),
         Opt("--namespace", help="job: where pipeline pods run (default kubeflow)", kw={"default": "kubeflow"}),
         Opt("--image", help="job: the image (default the CPU image of --package)"),
         Opt("--package", help="job: compiled pipeline whose image the Job uses (default "
                               "kadet/kubeflow/kadet_pipeline.yaml)")),
        config=False, locks=False),
)
