"""Distillation on several GPUs as a Kubeflow Trainer job (the pipeline's distill step, ``gpu_count > 1``).

The distill task then holds no GPU itself: it writes the labels and the run's config to a
folder on the shared work-dir PVC, creates a job whose every process runs::

    torchrun -m kadet.kubeflow.distill_worker <job>     # reads <job>/config.yaml and <job>/labels.jsonl

(``torchrun`` reads its node count, node rank, processes per node and rendezvous address from
the ``PET_*`` variables both operators set; :mod:`kadet.stages.distill.parallel` does the rest), waits for it,
and copies ``<job>/out`` into its own output. The job folder and the job name are keyed by the
labels and the config, so a retried task re-attaches to the running job, or resumes a failed
one from its per-epoch checkpoints on the PVC.

Which API the cluster serves decides the manifest (``kind: auto``):

- ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator 1.x): one ``Master`` replica plus
  ``nodes - 1`` ``Worker`` replicas, ``nprocPerNode`` = GPUs per node, container ``pytorch``.
- ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, Kubeflow Trainer >= 2.2): ``runtimeRef`` the
  ``torch-distributed`` ClusterTrainingRuntime, ``trainer`` (image, command, nodes, processes,
  resources), and the pod settings (PVC, node selector, tolerations, security context, service
  account) as a ``runtimePatches`` entry on the runtime's ``node`` job. ``runtimePatches`` came with
  Trainer 2.2 (:data:`MIN_TRAINER`); the job is created with strict field validation, so an older
  Trainer refuses it by that field's name and the task says which Trainer it needs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kadet.core.errors import KadetError

log = logging.getLogger(__name__)

PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob")
TRAINJOB = ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob")
KINDS = {"PyTorchJob": PYTORCHJOB, "TrainJob": TRAINJOB}
POD_LABEL = {"PyTorchJob": "training.kubeflow.org/job-name", "TrainJob": "jobset.sigs.k8s.io/jobset-name"}
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass
class JobSettings:
    """What the compiled pipeline knows about the job (``kadet/kubeflow/platform.yaml``); JSON-able, so
    it reaches the distill task as one string parameter."""

    image: str
    gpus_per_node: int
    nodes: int = 1
    kind: str = "auto"  # auto | PyTorchJob | TrainJob
    runtime: str = "torch-distributed"  # TrainJob's ClusterTrainingRuntime
    accelerator: str = "nvidia.com/gpu"
    resources: dict[str, str] = field(default_factory=dict)  # cpu, memory per node
    env: list[dict] = field(default_factory=list)  # Kubernetes EnvVar objects (values, secretKeyRef)
    pvc: str = ""
    mount: str = "/var/cache/kadet"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict] = field(default_factory=list)
    security_context: dict[str, Any] = field(default_factory=dict)  # Kubernetes field names (runAsUser...)
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = ""
    shm_size: str = "2Gi"

    @classmethod
    def from_json(cls, text: str) -> "JobSettings":
        data = json.loads(text)
        data.pop("timeout_s", None)   # an older pipeline's fixed wait: now the setting distill.trainer_wait_s
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise KadetError(f"trainer job settings: unknown key(s) {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def job_key(labels: str | Path, config_yaml: str) -> str:
    from kadet.core.manifest import digest

    blob = json.dumps({"labels": digest(labels), "config": config_yaml}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def command(job_dir: str) -> list[str]:
    """Each process's command: the job's own entry point (kadet/kubeflow/distill_worker.py)."""
    return ["torchrun", "-m", "kadet.kubeflow.distill_worker", job_dir]


def _container(s: JobSettings, name: str, job_dir: str) -> dict:
    res = {k: v for k, v in s.resources.items() if v}
    res[s.accelerator] = str(s.gpus_per_node)
    c = {"name": name, "image": s.image, "command": command(job_dir), "env": copy.deepcopy(s.env),
         "resources": {"requests": dict(res), "limits": dict(res)},
         "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    if s.pvc:
        c["volumeMounts"].append({"name": "kadet-work", "mountPath": s.mount})
    if s.security_context:
        c["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                **s.security_context}
    return c


def _pod_spec(s: JobSettings, container: dict) -> dict:
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "OnFailure",
                            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.shm_size}}]}
    if s.pvc:
        spec["volumes"].append({"name": "kadet-work", "persistentVolumeClaim": {"claimName": s.pvc}})
    if s.node_selector:
        spec["nodeSelector"] = dict(s.node_selector)
    if s.tolerations:
        spec["tolerations"] = copy.deepcopy(s.tolerations)
    if s.service_account:
        spec["serviceAccountName"] = s.service_account
    return spec


def render(s: JobSettings, kind: str, name: str, namespace: str, job_dir: str) -> dict:
    """The job manifest (``kind`` PyTorchJob or TrainJob) for ``job_dir`` on the PVC."""
    meta = {"name": name, "namespace": namespace, "labels": {**s.labels, "app.kubernetes.io/part-of": "kadet"}}
    if kind == "PyTorchJob":
        def replica(n: int) -> dict:
            return {"replicas": n, "restartPolicy": "OnFailure",
                    "template": {"metadata": {"labels": dict(meta["labels"])},
                                 "spec": _pod_spec(s, _container(s, "pytorch", job_dir))}}

        specs = {"Master": replica(1)}
        if s.nodes > 1:
            specs["Worker"] = replica(s.nodes - 1)
        return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": meta,
                "spec": {"nprocPerNode": str(s.gpus_per_node), "pytorchReplicaSpecs": specs,
                         "runPolicy": {"backoffLimit": 2, "cleanPodPolicy": "None"}}}
    if kind == "TrainJob":
        c = _container(s, "node", job_dir)
        pod = _pod_spec(s, {"name": "node", "volumeMounts": c["volumeMounts"],
                            **({"securityContext": c["securityContext"]} if "securityContext" in c else {})})
        pod.pop("restartPolicy")
        patch = {"manager": "kadet.io/distill",
                 "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                     {"name": "node", "template": {"spec": {"template": {
                         "metadata": {"labels": dict(meta["labels"])}, "spec": pod}}}}]}}}}
        return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": meta,
                "spec": {"runtimeRef": {"name": s.runtime, "kind": "ClusterTrainingRuntime",
                                        "apiGroup": "trainer.kubeflow.org"},
                         "trainer": {"image": s.image, "command": c["command"], "env": c["env"],
                                     "numNodes": s.nodes, "numProcPerNode": s.gpus_per_node,
                                     "resourcesPerNode": c["resources"]},
                         "runtimePatches": [patch]}}
    raise KadetError(f"trainer job kind must be PyTorchJob or TrainJob, got {kind!r}")


def served_kind(api_client) -> str:
    """TrainJob where the cluster serves Kubeflow Trainer 2.x, else PyTorchJob (Training Operator)."""
    from kubernetes import client

    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    if TRAINJOB[0] in groups:
        return "TrainJob"
    if PYTORCHJOB[0] in groups:
        return "PyTorchJob"
    raise KadetError("distill: gpu_count > 1 needs Kubeflow Trainer (trainer.kubeflow.org TrainJob) or the "
                     "Training Operator (kubeflow.org PyTorchJob) on the cluster; neither API is served")


def state(kind: str, job: dict) -> tuple[str, str]:
    """``(running | succeeded | failed, message)`` from the job's status conditions."""
    done, failed = ("Succeeded", "Failed") if kind == "PyTorchJob" else ("Complete", "Failed")
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == done:
            return "succeeded", cond.get("message", "")
        if cond.get("type") == failed:
            return "failed", cond.get("message") or cond.get("reason", "")
    return "running", ""


#: ``TrainJob.spec.runtimePatches`` (how kadet puts the PVC, node selector, tolerations and security
#: context on the job's pods) came with Kubeflow Trainer v2.2.0 (kubeflow/trainer#3309, "Replace
#: PodTemplateOverrides with RuntimePatches API"); 2.0 and 2.1 have ``podTemplateOverrides`` instead.
MIN_TRAINER = "2.2"


def _create_error(kind: str, ns: str, name: str, exc) -> str:
    """One line for a refused create; an API server that does not know ``runtimePatches`` is a
    Trainer older than :data:`MIN_TRAINER`."""
    body = exc.body or ""
    if kind == "TrainJob" and exc.status in (400, 422) and "runtimePatches" in body:
        return (f"distill: the cluster's Kubeflow Trainer does not know TrainJob.spec.runtimePatches (it refused "
                f"{ns}/{name}: {exc.status} {exc.reason}): kadet's TrainJob needs Kubeflow Trainer >= {MIN_TRAINER}; "
                "upgrade it, or set trainer_kind: PyTorchJob in kadet/kubeflow/platform.yaml where the Training "
                "Operator 1.x is installed")
    return f"distill: cannot create {kind} {ns}/{name}: {exc.status} {exc.reason} {body[:300]}"


def run_job(manifest: dict, api, poll_s: float = 15.0, timeout_s: float = 24 * 3600,
            max_attempts: int = 10) -> str:
    """Create the job, or re-attach to a running or finished one of the same name, and wait
    until it ends; returns the name it ran under.

    ``api`` is a ``kubernetes.client.CustomObjectsApi``. Names are ``<name>-<attempt>``: a job
    that failed (an earlier try) stays for its logs and the next attempt gets the next number;
    its ranks resume from the checkpoints. So the runner needs create and get, never delete.
    The wait is bounded: :func:`wait_job`."""
    from kubernetes.client.rest import ApiException

    kind = manifest["kind"]
    group, version, plural, _ = KINDS[kind]
    ns, base = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    for attempt in range(1, max_attempts + 1):
        name = f"{base}-{attempt}"
        try:
            job = api.get_namespaced_custom_object(group, version, ns, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise KadetError(f"distill: cannot read {kind} {ns}/{name}: {exc.status} {exc.reason}") from None
            body = copy.deepcopy(manifest)
            body["metadata"]["name"] = name
            try:   # Strict: an API server that does not know a field refuses it instead of dropping it
                api.create_namespaced_custom_object(group, version, ns, plural, body, field_validation="Strict")
            except ApiException as exc2:
                raise KadetError(_create_error(kind, ns, name, exc2)) from None
            log.info("distill: created %s %s/%s", kind, ns, name)
            break
        if state(kind, job)[0] != "failed":
            log.info("distill: re-attaching to %s %s/%s", kind, ns, name)
            break
    else:
        raise KadetError(f"distill: {kind} {ns}/{base}-1 .. -{max_attempts} all failed; see their pods' logs")
    return wait_job(api, kind, ns, name, poll_s, timeout_s)


def wait_job(api, kind: str, ns: str, name: str, poll_s: float, timeout_s: float) -> str:
    """Wait until job ``name`` succeeds (returns its name) or fails, or until it is ``timeout_s``
    old (from its creation, so a retried task that re-attaches does not start the clock again):
    then fail saying which job, for how long and in what state (:func:`stalled_text`)."""
    group, version, plural, _ = KINDS[kind]
    start = time.monotonic()
    while True:
        job = api.get_namespaced_custom_object(group, version, ns, plural, name)
        st, msg = state(kind, job)
        if st == "succeeded":
            return name
        if st == "failed":
            raise KadetError(f"distill: {kind} {ns}/{name} failed: {msg or 'see its pods'} "
                             f"(kubectl -n {ns} logs -l {POD_LABEL[kind]}={name})")
        waited = max(time.monotonic() - start, job_age(job) or 0.0)
        if waited > timeout_s:
            raise KadetError(stalled_text(kind, ns, name, job, waited, timeout_s))
        time.sleep(poll_s)


def job_age(job: dict) -> float | None:
    """Seconds since the job's ``metadata.creationTimestamp`` (None without one)."""
    from datetime import datetime, timezone

    stamp = (job.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    created = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return (datetime.now(timezone.utc) - created).total_seconds()


def stalled_text(kind: str, ns: str, name: str, job: dict, waited: float, timeout_s: float) -> str:
    """Why the distill task gives up on a job: which one, how long, its last condition (or that it
    has none: its pods never started, e.g. Pending for a GPU), and what to do."""
    conds = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if conds:
        last = conds[-1]
        detail = ": ".join(str(x) for x in (last.get("reason"), last.get("message")) if x)
        where = f"its last condition is {last.get('type')}" + (f" ({detail})" if detail else "")
    else:
        where = "it has no condition yet: its pods have not started (Pending: no node with a free GPU?)"
    return (f"distill: {kind} {ns}/{name} has not finished after {waited:.0f} s (distill.trainer_wait_s = "
            f"{timeout_s:.0f}); {where}. The job is left as it is (the pipeline's runner may not delete it): "
            f"kubectl -n {ns} describe {kind.lower()} {name}; kubectl -n {ns} get pods -l {POD_LABEL[kind]}={name}")


def prepare_job_dir(work_dir: str | Path, labels: str | Path, config_yaml: str) -> Path:
    """``<work_dir>/distill-jobs/<key>``: the labels and config the job's ranks read."""
    job_dir = Path(work_dir) / "distill-jobs" / job_key(labels, config_yaml)
    job_dir.mkdir(parents=True, exist_ok=True)
    if not (job_dir / "labels.jsonl").exists():
        shutil.copyfile(labels, job_dir / "labels.jsonl.tmp")
        (job_dir / "labels.jsonl.tmp").rename(job_dir / "labels.jsonl")
    (job_dir / "config.yaml").write_text(config_yaml, encoding="utf-8")
    return job_dir


def distill_as_job(cfg, labels: str | Path, out: str | Path, settings: JobSettings,
                   namespace: str | None = None, launch=None) -> Path:
    """Train on the cluster as a Kubeflow Trainer job and copy its outputs to ``out``.

    ``launch(manifest)`` creates and waits for the job (default: :func:`run_job` through the
    in-cluster Kubernetes API); the tests give it a local torchrun that executes the rendered
    container command as the operator would."""
    from kadet.core.config import dump_config

    job_dir = prepare_job_dir(cfg.work_dir, labels, dump_config(cfg))
    if launch is None:
        from kubernetes import client, config as kconfig

        kconfig.load_incluster_config()
        api_client = client.ApiClient()
        namespace = namespace or Path(NAMESPACE_FILE).read_text().strip()
        kind = settings.kind if settings.kind != "auto" else served_kind(api_client)

        def launch(manifest):
            run_job(manifest, client.CustomObjectsApi(api_client), timeout_s=cfg.distill.trainer_wait_s)
    else:
        kind = settings.kind if settings.kind != "auto" else "PyTorchJob"
    manifest = render(settings, kind, f"kadet-distill-{job_dir.name}", namespace or "default", str(job_dir))
    launch(manifest)
    src = job_dir / "out"
    if not (src / "manifest.json").exists():
        raise KadetError(f"distill: the job ended without writing {src / 'manifest.json'}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name == "checkpoints":
            continue
        dest = out / item.name
        if item.is_dir():
            shutil.copytree(item, dest, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest)
    return job_dir
