"""Submit the compiled pipeline to a Kubeflow Pipelines endpoint, once or on a schedule.

    kadet submit   --host https://kfp.example.com --data s3://kadet/corpora/scifact [--param k=v ...]
                   [--profile local|gpu|FILE] [--config FILE] [--set key=value ...] [--work-dir PATH]
                   [--model-name NAME] [--no-cache]
    kadet schedule --host ... --data ... --cron "0 3 * * 1" [--name NAME] [--replace]
    kadet schedule list | pause | resume | delete --host ... [--name NAME | --data URI]

Both use ``kfp.Client`` with the committed ``kadet/kubeflow/kadet_pipeline.yaml`` or ``--package``
(``make -C images compile`` writes one for your registry into ``build/``). ``--profile`` becomes
the pipeline's ``profile`` parameter (a profile file's settings go into ``config_yaml``);
``--config`` and ``--set`` become its ``config_yaml``: only the settings that differ from the
profile, so everything else (the cluster's TGI address, for one) stays the pods' own.
Everything that can be checked here is checked before any call: parameters, config, ``--cron``,
``--work-dir``.

One corpus, one schedule, one registered model: unless named, both are ``kadet-<corpus>`` (the
last part of ``--data``), so a second corpus never deletes the first one's schedule nor fights
over its ``champion``. A schedule of the same name with another version, cron or parameters is
refused unless ``--replace``. A recurring run has ``max_concurrency=1`` (a retraining never
overlaps the previous one) and no catch-up (missed intervals are skipped, not replayed); its cron
runs in the timezone of KFP's scheduler (:data:`TIMEZONE_NOTE`). ``--no-cache`` uploads the
package with caching off on every task as a version of its own (:func:`uncached_package`).
Authentication follows ``kfp.Client``: ``--token``/``$KFP_TOKEN`` (bearer), or the in-cluster
service account token. A failed call is one line naming the host and what it answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kadet.core.io import read_text
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

    docs = list(yaml.safe_load_all(read_text(package)))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values() if len(docs) > 1 else []
    return sorted({m["mountPath"] for ex in executors for m in ex.get("pvcMount", [])})


def package_images(package: str | Path) -> dict[str, str]:
    """``{executor: container image}`` of the compiled pipeline's steps (``exec-prepare``: the CPU image)."""
    import yaml

    spec = next(yaml.safe_load_all(read_text(package)))
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
#: A package whose steps carry a container ``securityContext`` (kfp-kubernetes'
#: ``set_security_context``; ``kfp_security_context: true`` in kadet/kubeflow/platform.yaml) needs
#: KFP >= 2.16.0: the field came with kubeflow/pipelines#12832 (first tagged in 2.16.0), and an
#: older API server's Argo compiler reads each step's Kubernetes config with a strict
#: ``protojson.Unmarshal`` (backend/src/v2/compiler/argocompiler/container.go), so it refuses the
#: run ("unknown field").
SECURITY_CONTEXT_BACKEND = (2, 16)


def package_floor(package: str | Path) -> tuple[tuple[int, int], str]:
    """``(oldest KFP backend, why)`` that runs this compiled package."""
    import yaml

    docs = list(yaml.safe_load_all(read_text(package)))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values() if len(docs) > 1 else []
    if any("securityContext" in ex for ex in executors):
        return SECURITY_CONTEXT_BACKEND, "its steps set a container securityContext (kfp_security_context: true)"
    return MIN_BACKEND, "dsl.Collected of artifacts"


def check_backend(info: dict, floor: tuple[int, int] = MIN_BACKEND, why: str = "dsl.Collected of artifacts") -> str:
    """The backend's version from its healthz answer; a clear error if it is older than ``floor``
    (:data:`MIN_BACKEND`; :func:`package_floor` for a package) or unknown."""
    tag = str(info.get("tag_name") or "")
    found = re.match(r"v?(\d+)\.(\d+)", tag)
    if not found or tuple(map(int, found.groups())) < floor:
        raise KadetError(f"the KFP backend is {tag or 'of unknown version'}; kadet's pipeline needs Kubeflow "
                         f"Pipelines >= {'.'.join(map(str, floor))} ({why}): upgrade it")
    return tag


def _check_package(host: str, token: str | None, package: str) -> None:
    """Refuse a backend too old for what this package needs beyond :data:`MIN_BACKEND` (which
    :func:`_connect` checks)."""
    floor, why = package_floor(package)
    if floor > MIN_BACKEND:
        check_backend(probe(host, token), floor, why)


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
    docs = list(yaml.safe_load_all(read_text(package)))
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


#: KFP's scheduler fires every cron in one timezone for the whole install: its
#: ``pipeline-install-config`` ConfigMap's ``cronScheduleTimezone`` (env ``CRON_SCHEDULE_TIMEZONE`` of
#: ``ml-pipeline-scheduledworkflow``; KFP's manifests set "UTC", unset means the controller's local
#: time). A recurring run cannot carry its own.
TIMEZONE_NOTE = ("in the KFP scheduler's timezone (pipeline-install-config cronScheduleTimezone: UTC as KFP "
                 "installs it)")
#: ``kadet schedule``'s actions; ``create`` is what ``kadet schedule --cron ... --data ...`` does.
SCHEDULE_ACTIONS = ("create", "list", "pause", "resume", "delete")


def corpus_slug(data_uri: str) -> str:
    """The corpus' name as a DNS-label-like slug: the last part of its URI (``s3://kadet/corpora/
    SciFact_v2/`` -> ``scifact-v2``)."""
    from urllib.parse import urlparse

    parsed = urlparse(data_uri)
    parts = [p for p in (parsed.netloc + "/" + parsed.path if parsed.scheme else data_uri).split("/") if p]
    slug = re.sub(r"[^a-z0-9]+", "-", parts[-1].lower()).strip("-")[:48].strip("-") if parts else ""
    if not slug:
        raise KadetError(f"--data {data_uri}: no corpus name to derive names from: pass --name and --model-name")
    return slug


def default_name(data_uri: str) -> str:
    """The schedule name and the registered model name a corpus gets unless the user names them:
    ``kadet-<corpus slug>``, so two corpora never share either."""
    return f"kadet-{corpus_slug(data_uri)}"


def with_model_name(params: dict, model_name: str | None = None) -> tuple[dict, str, str]:
    """``(params, model name, where it came from)``: ``--model-name``, else the ``model_name``
    parameter or ``register.model_name`` in ``config_yaml`` the user set, else ``kadet-<corpus>``
    (the pipeline's own default, ``kadet-embedding``, would make every corpus fight over one
    champion)."""
    import yaml

    if model_name:
        if params.get("model_name") not in (None, "", model_name):
            raise KadetError("--model-name and --param model_name both set the pipeline parameter model_name: use one")
        return {**params, "model_name": model_name}, model_name, "--model-name"
    if params.get("model_name"):
        return params, str(params["model_name"]), "--param model_name"
    doc = yaml.safe_load(params.get("config_yaml") or "") or {}
    configured = (doc.get("register") or {}).get("model_name") if isinstance(doc, dict) else None
    if configured:
        return params, str(configured), "config_yaml (register.model_name)"
    derived = default_name(str(params["data_uri"]))
    return {**params, "model_name": derived}, derived, "from --data's corpus; --model-name sets another"


def uncached_package(package: str | Path, folder: str | Path) -> str:
    """A copy of the compiled pipeline in ``folder`` whose every task has caching off: uploaded, it is
    a version of its own (its name is its content's digest). ``kfp.Client`` applies ``enable_caching``
    only to a package it submits inline, never to a run of an uploaded version, and the v2beta1 run
    has no cache field, so ``--no-cache`` is this version."""
    import yaml

    docs = list(yaml.safe_load_all(read_text(package)))
    spec = docs[0]
    dags = [spec.get("root", {}).get("dag", {})] + [c.get("dag", {}) for c in spec.get("components", {}).values()]
    for dag in dags:
        for task in (dag.get("tasks") or {}).values():
            task["cachingOptions"] = {}
    out = Path(folder) / f"{Path(package).stem}-nocache.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return str(out)


@contextlib.contextmanager
def _package_for(package: str | None, caching: bool) -> Iterator[str]:
    """The package to upload: as compiled, or (``caching`` off) its uncached copy."""
    import tempfile

    path = package_path(package)
    if caching:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="kadet-nocache-") as folder:
        yield uncached_package(path, folder)


def submit(host: str, params: dict, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
           package: str | None = None, namespace: str | None = None, service_account: str = DEFAULT_SERVICE_ACCOUNT,
           caching: bool = True, token: str | None = None) -> str:
    """Check the backend, upload (or reuse) the pipeline version (``caching`` off: its uncached
    version), start one run; returns its run id."""
    with kfp_errors(host), _package_for(package, caching) as pkg:
        _check_package(host, token, pkg)
        c, pid, vid = _connect(host, namespace, token, pkg)
        exp = c.create_experiment(experiment, namespace=namespace)
        run = c.run_pipeline(exp.experiment_id, run_name or f"{PIPELINE_NAME} {params.get('data_uri', '')}".strip(),
                             params=params, pipeline_id=pid, version_id=vid, service_account=service_account)
    return run.run_id


def _experiment_id(c, experiment: str, namespace: str | None) -> str | None:
    found = c.list_experiments(page_size=10, filter=_by_name(experiment), namespace=namespace).experiments or []
    return next((e.experiment_id for e in found if e.display_name == experiment), None)


def _jobs(c, experiment_id: str) -> list:
    """Every recurring run of the experiment (all pages)."""
    jobs, token = [], ""
    while True:
        page = c.list_recurring_runs(page_token=token, page_size=100, experiment_id=experiment_id)
        jobs += page.recurring_runs or []
        token = page.next_page_token or ""
        if not token:
            return jobs


def _cron(job) -> str | None:
    return job.trigger.cron_schedule.cron if job.trigger is not None and job.trigger.cron_schedule is not None else None


def _short(value: object) -> str:
    return _one_line(json.dumps(value) if not isinstance(value, str) else repr(value), 60)


def schedule_changes(job, version_id: str, cron6: str, params: dict) -> list[str]:
    """What differs between the recurring run ``job`` and the one asked for (empty: the same)."""
    ref = job.pipeline_version_reference
    changes = [] if ref is not None and ref.pipeline_version_id == version_id else ["the pipeline version"]
    if _cron(job) != cron6:
        changes.append(f"cron {_cron(job)!r} -> {cron6!r}")
    old = dict(job.runtime_config.parameters or {}) if job.runtime_config else {}
    changes += [f"{key} {_short(old.get(key))} -> {_short(params.get(key))}"
                for key in sorted(set(old) | set(params)) if old.get(key) != params.get(key)]
    return changes


def schedule(host: str, params: dict, cron: str, name: str, experiment: str = DEFAULT_EXPERIMENT,
             package: str | None = None, namespace: str | None = None,
             service_account: str = DEFAULT_SERVICE_ACCOUNT, caching: bool = True, token: str | None = None,
             replace: bool = False) -> tuple[str, str]:
    """Create the recurring run ``name`` (cron, max_concurrency=1, no catch-up) on the uploaded
    pipeline version: ``(its id, "created" | "unchanged" | "replaced")``. The same schedule again is
    left as it is; one of that name with another version, cron or parameters is refused (naming what
    differs) unless ``replace``, which deletes it and creates the new one."""
    cron6 = kfp_cron(cron)  # before any call
    with kfp_errors(host), _package_for(package, caching) as pkg:
        _check_package(host, token, pkg)
        c, pid, vid = _connect(host, namespace, token, pkg)
        exp = c.create_experiment(experiment, namespace=namespace)
        same = [j for j in _jobs(c, exp.experiment_id) if j.display_name == name]
        changed = {j.recurring_run_id: schedule_changes(j, vid, cron6, params) for j in same}
        if len(same) == 1 and not changed[same[0].recurring_run_id]:
            return same[0].recurring_run_id, "unchanged"
        if same and not replace:
            what = "; ".join(next(iter(d for d in changed.values() if d), ["a duplicate name"]))
            raise KadetError(f"a schedule named {name!r} already exists in experiment {experiment!r} with other "
                             f"settings ({what}): pass --replace to replace it, or --name for another schedule")
        for job in same:
            c.delete_recurring_run(job.recurring_run_id)
        job = c.create_recurring_run(
            exp.experiment_id, name, cron_expression=cron6, max_concurrency=1, no_catchup=True, params=params,
            pipeline_id=pid, version_id=vid, service_account=service_account)
    return job.recurring_run_id, "replaced" if same else "created"


@dataclass(frozen=True)
class ScheduleInfo:
    """One recurring run as ``kadet schedule list`` shows it."""

    name: str
    id: str
    status: str       # ENABLED, DISABLED
    cron: str
    data_uri: str
    model_name: str

    def line(self) -> str:
        return f"{self.name:<28} {self.status:<9} {self.cron:<18} {self.model_name or '-':<24} {self.data_uri}  {self.id}"


def _info(job) -> ScheduleInfo:
    params = dict(job.runtime_config.parameters or {}) if job.runtime_config else {}
    return ScheduleInfo(job.display_name, job.recurring_run_id, str(job.status or "?"), _cron(job) or "-",
                        str(params.get("data_uri", "")), str(params.get("model_name", "")))


def manage_schedule(host: str, action: str, name: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                    namespace: str | None = None, token: str | None = None) -> list[ScheduleInfo]:
    """``list`` the experiment's recurring runs, or ``pause`` / ``resume`` / ``delete`` the one named
    ``name``; returns the recurring runs it listed or acted on."""
    if action not in SCHEDULE_ACTIONS[1:]:
        raise KadetError(f"kadet schedule {action}: expected one of {', '.join(SCHEDULE_ACTIONS)}")
    if action != "list" and not name:
        raise KadetError(f"kadet schedule {action}: which schedule? pass --name NAME or the corpus' --data URI")
    with kfp_errors(host):
        probe(host, token)
        c = client(host, namespace, token)
        exp = _experiment_id(c, experiment, namespace)
        jobs = _jobs(c, exp) if exp else []
        if action == "list":
            return [_info(j) for j in jobs]
        mine = [j for j in jobs if j.display_name == name]
        if not mine:
            raise KadetError(f"no schedule named {name!r} in experiment {experiment!r}"
                             f"{' (namespace ' + namespace + ')' if namespace else ''}: `kadet schedule list` shows them")
        call = {"pause": c.disable_recurring_run, "resume": c.enable_recurring_run,
                "delete": c.delete_recurring_run}[action]
        for job in mine:
            call(job.recurring_run_id)
    return [_info(j) for j in mine]
