"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint, once or on a schedule.

    kadet submit   --host https://kfp.example.com --data s3://kadet/corpora/scifact [--param k=v ...]
                   [--profile local|gpu|FILE] [--config FILE] [--set key=value ...] [--work-dir PATH]
    kadet schedule --host ... --data ... --cron "0 3 * * 1" [--name kadet-weekly]

Both use ``kfp.Client`` with the committed ``kadet/kubeflow/kadet_pipeline.yaml`` or ``--package``
(``make -C images compile`` writes one for your registry into ``build/``). ``--profile`` becomes
the pipeline's ``profile`` parameter (a profile file's settings go into ``config_yaml``);
``--config`` and ``--set`` become its ``config_yaml``: only the settings that differ from the
profile, so everything else (the cluster's TGI address, for one) stays the pods' own.
Everything that can be checked here is checked before any call: parameters, config, ``--cron``,
``--work-dir``. A recurring run has ``max_concurrency=1`` (a retraining never overlaps the
previous one) and no catch-up (missed intervals are skipped, not replayed). Authentication
follows ``kfp.Client``: ``--token``/``$KFP_TOKEN`` (bearer), or the in-cluster service account
token. A failed call is one line naming the host and what it answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from kadet.kubeflow import parameters
from kadet.core.errors import KadetError
from kadet.kubeflow.compile import DEFAULT_OUTPUT
from kadet.kubeflow.pipeline import PIPELINE_NAME

DEFAULT_EXPERIMENT = "kadet"
DEFAULT_SERVICE_ACCOUNT = "kadet-pipeline-runner"
#: The pipeline's own default of its ``profile`` parameter (kadet/kubeflow/pipeline.py).
PIPELINE_PROFILE = "gpu"

#: Field name, lowest and highest value of KFP's 6-field cron (robfig/cron: seconds first).
CRON_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31),
               ("month", 1, 12), ("day of week", 0, 6))
CRON_NAMES = {"month": ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
              "day of week": ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]}


def _cron_field_ok(text: str, name: str, low: int, high: int) -> bool:
    names = CRON_NAMES.get(name, [])
    offset = low if name == "month" else 0
    for part in text.split(","):
        span, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if span in ("*", "?"):
            continue
        ends = span.split("-")
        if len(ends) > 2:
            return False
        for end in ends:
            value = int(end) if end.isdigit() else (names.index(end.upper()) + offset if end.upper() in names else None)
            if value is None or not low <= value <= high:
                return False
    return True


def kfp_cron(expr: str) -> str:
    """KFP's 6-field cron (seconds first) from a standard 5-field one; 6 fields pass through.
    Each field is checked (numbers in range, names, ``*``, ``?``, lists, ranges, ``/steps``)."""
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise KadetError(f"--cron {expr!r}: expected 5 fields (min hour day month weekday) or KFP's 6")
    full = ["0", *fields] if len(fields) == 5 else fields
    for text, (name, low, high) in zip(full, CRON_FIELDS):
        if not _cron_field_ok(text, name, low, high):
            raise KadetError(f"--cron {expr!r}: the {name} field {text!r} is not valid ({low}-{high}, "
                             "names, *, lists a,b, ranges a-b, steps */n)")
    return " ".join(full)


def parse_params(items: list[str], data: str | None) -> dict:
    """``key=value`` pipeline parameters (values parsed as YAML scalars), plus ``data_uri``; a name
    the pipeline does not have (kadet/kubeflow/parameters.py) is refused, a renamed one naming its
    replacement."""
    import yaml

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise KadetError(f"--param {item!r}: expected key=value")
        params[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    if data:
        params["data_uri"] = data
    parameters.check_names(params)   # a parameter of an older pipeline names what replaced it
    if "data_uri" not in params:
        raise KadetError("no data: pass --data URI (the corpus, as the cluster sees it: s3://...)")
    return params


def config_params(profile: str | None = None, config: str | None = None, overrides: list[str] | None = None) -> dict:
    """The pipeline parameters ``profile`` and ``config_yaml`` for ``--profile``, ``--config`` and
    ``--set``, as ``kadet run`` reads them: a packaged profile by name, a profile file's settings
    and the rest as YAML holding only what differs from the profile the pipeline will apply (and
    every key given with ``--set``). Checked here: a bad key or value fails before any call."""
    import yaml

    from kadet.core.config import PROFILES, RENAMED, KadetConfig, _walk, config_from_text, get_path, load_config, \
        profile_config

    overrides = list(overrides or [])
    if profile is None and not config and not overrides:
        return {}
    named = profile is None or profile in (*PROFILES, "")
    pipeline_profile = (PIPELINE_PROFILE if profile is None else profile) if named else ""
    cfg = load_config(config, overrides, base=profile_config(profile if profile is not None else pipeline_profile))
    base = profile_config(pipeline_profile) if named else KadetConfig()
    named_keys = {RENAMED.get(k, k) for k in (item.split("=", 1)[0].strip() for item in overrides)}
    nested: dict = {}
    for key, _ in _walk(cfg):
        if get_path(cfg, key) != get_path(base, key) or key in named_keys:
            *parents, last = key.split(".")
            cursor = nested
            for part in parents:
                cursor = cursor.setdefault(part, {})
            cursor[last] = get_path(cfg, key)
    text = yaml.safe_dump(nested, sort_keys=False) if nested else ""
    if config_from_text(text, base=profile_config(pipeline_profile)).to_dict() != cfg.to_dict():
        raise KadetError("internal: the pipeline's config_yaml would not reproduce --profile/--config/--set")
    return {**({"profile": pipeline_profile} if profile is not None else {}), **({"config_yaml": text} if text else {})}


def package_mounts(package: str | Path) -> list[str]:
    """The mount paths of the volumes the compiled pipeline's steps mount (the model cache)."""
    import yaml

    docs = list(yaml.safe_load_all(Path(package).read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values() if len(docs) > 1 else []
    return sorted({m["mountPath"] for ex in executors for m in ex.get("pvcMount", [])})


def package_images(package: str | Path) -> dict[str, str]:
    """``{executor: container image}`` of the compiled pipeline's steps (``exec-prepare``: the CPU image)."""
    import yaml

    spec = next(yaml.safe_load_all(Path(package).read_text()))
    return {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()}


def work_dir_param(work_dir: str | None, package: str | Path) -> dict:
    """``{"work_dir": ...}`` for ``--work-dir`` when it lies on a volume the steps mount; refused
    otherwise (a path elsewhere would vanish with each pod)."""
    if not work_dir:
        return {}
    mounts = package_mounts(package)
    if not any(work_dir.rstrip("/") == m.rstrip("/") or work_dir.startswith(m.rstrip("/") + "/") for m in mounts):
        raise KadetError(f"--work-dir {work_dir}: on the cluster the work dir must lie on the volume the steps mount "
                         f"({', '.join(mounts) or 'none in this package'}), e.g. --work-dir "
                         f"{(mounts or ['/var/cache/kadet'])[0]}/<team>")
    return {"work_dir": work_dir}


def run_params(params: dict, package: str | Path, profile: str | None = None, config: str | None = None,
               overrides: list[str] | None = None, work_dir: str | None = None) -> dict:
    """``params`` (from ``--data``/``--param``) with ``--profile``/``--config``/``--set``/``--work-dir``."""
    extra = {**config_params(profile, config, overrides), **work_dir_param(work_dir, package)}
    clash = sorted(set(extra) & set(params))
    if clash:
        flags = {"profile": "--profile", "config_yaml": "--config/--set", "work_dir": "--work-dir"}
        raise KadetError(f"--param {clash[0]} and {flags[clash[0]]} both set the pipeline parameter {clash[0]}: "
                         "use one")
    return {**params, **extra}


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """The cause of a connection failure in a few words (``Connection refused``, ``Name or service
    not known``), else the exception's own text."""
    text = str(getattr(exc, "reason", None) or exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return found.group(1).strip() if found else _one_line(text)


def _headers(token: str | None, cookies: str | None) -> dict:
    token = token or os.environ.get("KFP_TOKEN")
    return {**({"Authorization": f"Bearer {token}"} if token else {}), **({"Cookie": cookies} if cookies else {})}


def probe(host: str, token: str | None = None, cookies: str | None = None, timeout: float = 15.0) -> dict:
    """The KFP API's healthz answer (v1beta1: it carries the version) or one clear error: not
    reachable, an HTTP error (with what to do about 401/403), or not the KFP API (a login page)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(host.rstrip("/") + "/apis/v1beta1/healthz", headers=_headers(token, cookies))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        hint = ("; pass a token with --token or $KFP_TOKEN (behind oauth2-proxy: manifests/README.md, 'A token')"
                if exc.code in (401, 403) else "; is --host the KFP API (https://<kubeflow>/pipeline)?")
        raise KadetError(f"the KFP API at {host} answered {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise KadetError(f"cannot reach the KFP API at {host}: {_reason(exc)}") from None
    try:
        info = json.loads(body)
    except ValueError:
        raise KadetError(f"{host} did not answer as the KFP API (GET /apis/v1beta1/healthz gave no JSON: a login page? "
                         "pass --token, see manifests/README.md, 'A token')") from None
    return info if isinstance(info, dict) else {}


@contextlib.contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """Turn what ``kfp.Client`` raises when a call fails into one KadetError line."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as exc:
        raise KadetError(f"the KFP API at {host} answered {exc.status} {exc.reason}: {_one_line(exc.body or '')}") \
            from None
    except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
        raise KadetError(f"cannot reach the KFP API at {host}: {_reason(exc)}") from None


def client(host: str, namespace: str | None = None, token: str | None = None, cookies: str | None = None):
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token or os.environ.get("KFP_TOKEN"),
                          cookies=cookies)


def package_path(package: str | None) -> str:
    path = Path(package) if package else DEFAULT_OUTPUT
    if not path.exists():
        raise KadetError(f"{path}: no compiled pipeline (make -C images compile, or python -m kadet.kubeflow.compile)")
    return str(path)


#: The oldest KFP backend that runs the compiled pipeline: ``dsl.Collected`` of artifacts came
#: with KFP 2.14.0 (its changelog: "backend/sdk: enable dsl.Collected for parameters & artifacts").
MIN_BACKEND = (2, 14)


def check_backend(info: dict) -> str:
    """The backend's version from its healthz answer; a clear error if it is older than
    :data:`MIN_BACKEND` or unknown."""
    tag = str(info.get("tag_name") or "")
    found = re.match(r"v?(\d+)\.(\d+)", tag)
    if not found or tuple(map(int, found.groups())) < MIN_BACKEND:
        raise KadetError(f"the KFP backend is {tag or 'of unknown version'}; kadet's pipeline needs Kubeflow "
                         f"Pipelines >= {'.'.join(map(str, MIN_BACKEND))} (dsl.Collected of artifacts): upgrade it")
    return tag


def _by_name(name: str) -> str:
    return json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})


def find_pipeline(c, name: str, namespace: str | None) -> str | None:
    """The id of pipeline ``name`` where this client uploads it: in ``namespace`` (a profile's own
    pipelines, multi-user Kubeflow), else among the shared ones."""
    found = c.list_pipelines(page_size=10, filter=_by_name(name), namespace=namespace).pipelines or []
    ids = [p.pipeline_id for p in found if p.display_name == name]
    if len(ids) > 1:
        raise KadetError(f"{len(ids)} pipelines named {name!r} in namespace {namespace or '(shared)'}: delete the extra ones")
    return ids[0] if ids else None


def source_commit() -> tuple[str, bool]:
    """``(commit, dirty)`` of the kadet source this runs from: ``$KADET_GIT_COMMIT`` (an image
    built without its .git), else ``git rev-parse`` of the checkout; ("", False) when neither."""
    import subprocess

    if os.environ.get("KADET_GIT_COMMIT"):
        return os.environ["KADET_GIT_COMMIT"][:12], False
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "", False
    return commit, bool(dirty)


def version_name(package: str, name: str = PIPELINE_NAME) -> str:
    """The pipeline version's name: kadet's version, the commit it was compiled from and the
    package's content (``kadet-0.1.0-gac7b85f1e2d3-1a2b3c4d5e6f``; no ``g<commit>`` outside a checkout),
    so one compiled YAML is one version however often it is submitted, and the UI says which kadet made it."""
    import hashlib

    from kadet import __version__

    commit, _ = source_commit()
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]
    return "-".join(p for p in (name, __version__, f"g{commit}" if commit else "", digest) if p)


def version_description(package: str) -> str:
    """What the UI says about a version: kadet's version, the commit (and whether the checkout had
    uncommitted changes), the package's digest and the images its steps run."""
    import hashlib

    from kadet import __version__
    from kadet.kubeflow.pipeline import DESCRIPTION

    commit, dirty = source_commit()
    images = sorted(set(package_images(package).values()))
    where = f"commit {commit}{' with uncommitted changes' if dirty else ''}" if commit else "commit unknown"
    return (f"kadet {__version__}, {where}; package sha256 {hashlib.sha256(Path(package).read_bytes()).hexdigest()}; "
            f"images {', '.join(images)}. {DESCRIPTION}")


def pipeline_version(c, package: str, name: str = PIPELINE_NAME, namespace: str | None = None) -> tuple[str, str, bool]:
    """``(pipeline id, version id, reused)``: the pipeline ``name`` (created if missing, with no
    version of its own: KFP's upload would add one named after the pipeline, a duplicate of the
    next) and its version :func:`version_name`, described by :func:`version_description` and
    uploaded only if missing, so the UI lists one pipeline with one version per compiled YAML."""
    from kfp_server_api import V2beta1Pipeline

    version = version_name(package, name)
    pid = find_pipeline(c, name, namespace)
    if pid is None:
        body = V2beta1Pipeline(display_name=name, description="kadet: adapt an embedding model to one corpus",
                               namespace=namespace)
        pid = c.pipelines.pipeline_service_create_pipeline(pipeline=body).pipeline_id
    found = c.list_pipeline_versions(pid, page_size=1, filter=_by_name(version)).pipeline_versions or []
    if found:
        return pid, found[0].pipeline_version_id, True
    v = c.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pid,
                                  description=version_description(package))
    return pid, v.pipeline_version_id, False


#: The first KFP backend that honours the run's deadline (platform.yaml ``deadline_s``: the
#: platform spec's ``pipelineConfig.activeDeadlineSeconds``, KFP PR #13187). Older backends read
#: the platform spec strictly and, finding a field they do not know, ignore the whole of it.
DEADLINE_BACKEND = (2, 17)


def for_backend(package: str, tag: str, folder: str) -> str:
    """``package``, or for a backend older than :data:`DEADLINE_BACKEND` a copy in ``folder``
    without the run's deadline (said on stderr), so that its platform spec is not dropped."""
    import sys

    import yaml

    found = re.match(r"v?(\d+)\.(\d+)", tag)
    if found and tuple(map(int, found.groups())) >= DEADLINE_BACKEND:
        return package
    docs = list(yaml.safe_load_all(Path(package).read_text()))
    kube = docs[1].get("platforms", {}).get("kubernetes", {}) if len(docs) > 1 else {}
    if "activeDeadlineSeconds" not in (kube.get("pipelineConfig") or {}):
        return package
    seconds = kube["pipelineConfig"].pop("activeDeadlineSeconds")
    if not kube["pipelineConfig"]:
        kube.pop("pipelineConfig")
    print(f"kadet: the KFP backend is {tag}: it cannot bound a run's time (from "
          f"{'.'.join(map(str, DEADLINE_BACKEND))}), so the package goes without its {seconds} s deadline; "
          "the steps' own timeouts still hold", file=sys.stderr)
    out = Path(folder) / Path(package).name
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return str(out)


def _connect(host: str, namespace: str | None, token: str | None, package: str | None):
    """Check the backend, then ``(client, pipeline id, version id)``: the package uploaded or reused
    (without the run's deadline on a backend that would drop the platform spec over it)."""
    import tempfile

    tag = check_backend(probe(host, token))
    c = client(host, namespace, token)
    with tempfile.TemporaryDirectory() as tmp:
        pid, vid, _ = pipeline_version(c, for_backend(package_path(package), tag, tmp), namespace=namespace)
    return c, pid, vid


def submit(host: str, params: dict, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
           package: str | None = None, namespace: str | None = None, service_account: str = DEFAULT_SERVICE_ACCOUNT,
           caching: bool = True, token: str | None = None) -> str:
    """Check the backend, upload (or reuse) the pipeline version, start one run; returns its run id."""
    with kfp_errors(host):
        c, pid, vid = _connect(host, namespace, token, package)
        exp = c.create_experiment(experiment, namespace=namespace)
        run = c.run_pipeline(exp.experiment_id, run_name or f"{PIPELINE_NAME} {params.get('data_uri', '')}".strip(),
                             params=params, pipeline_id=pid, version_id=vid, enable_caching=caching,
                             service_account=service_account)
    return run.run_id


def schedule(host: str, params: dict, cron: str, name: str = "kadet-retrain", experiment: str = DEFAULT_EXPERIMENT,
             package: str | None = None, namespace: str | None = None,
             service_account: str = DEFAULT_SERVICE_ACCOUNT, caching: bool = True, token: str | None = None) -> str:
    """Create the recurring run ``name`` (cron, max_concurrency=1, no catch-up) on the uploaded
    pipeline version; idempotent by name: the same schedule again is left as it is, a changed one
    (version, cron, parameters) replaces it. Returns its id."""
    cron6 = kfp_cron(cron)  # before any call
    with kfp_errors(host):
        c, pid, vid = _connect(host, namespace, token, package)
        exp = c.create_experiment(experiment, namespace=namespace)
        for job in c.list_recurring_runs(experiment_id=exp.experiment_id, page_size=100).recurring_runs or []:
            if job.display_name != name:
                continue
            spec = job.pipeline_version_reference
            same = (spec is not None and spec.pipeline_version_id == vid and job.trigger is not None
                    and job.trigger.cron_schedule is not None and job.trigger.cron_schedule.cron == cron6
                    and (job.runtime_config.parameters if job.runtime_config else {}) == params)
            if same:
                return job.recurring_run_id
            c.delete_recurring_run(job.recurring_run_id)
        job = c.create_recurring_run(
            exp.experiment_id, name, cron_expression=cron6, max_concurrency=1, no_catchup=True, params=params,
            pipeline_id=pid, version_id=vid, enable_caching=caching, service_account=service_account)
    return job.recurring_run_id
