"""The distill step as a Kubeflow Trainer job (``gpu_count > 1``): the PyTorchJob and TrainJob it
renders validate strictly against the operators' own API types (kubeflow-training 1.9 for
``kubeflow.org/v1``, kubeflow-trainer-api 2.3 for ``trainer.kubeflow.org/v1alpha1``, the pod
template against Kubernetes' schema), the container command of the rendered job really trains
data-parallel when run as the operator would run it (torchrun with the ``PET_*`` variables it
sets, 2 processes, gloo), and the job's lifecycle (create, re-attach, a failed try) is handled
against a fake Kubernetes API (fault injection: no cluster here)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from kadet.core.config import load_config
from kadet.core.errors import KadetError
from kadet.kubeflow.steps import distill_step
from kadet.kubeflow.trainjob import JobSettings, distill_as_job, render, run_job, state
from tests.unit.stages.test_distill import _labels

K8S_VERSION = "1.31"
ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- strict validation
def _openapi_model(name: str):
    import kubernetes.client.models as k8s
    import kubeflow.training.models as kf

    return getattr(kf, name, None) or getattr(k8s, name)


def check_openapi(value, type_name: str, path: str = "$") -> list[str]:
    """``value`` against an openapi-generator type (``V1PodSpec``, ``list[V1Container]``, ``dict(str, X)``):
    unknown fields, wrong types and missing required fields are errors."""
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, v in enumerate(value) for e in check_openapi(v, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [e for k, v in value.items() for e in check_openapi(v, inner, f"{path}.{k}")]
    plain = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in plain:
        ok = isinstance(value, plain[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    cls = _openapi_model(type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    by_json = {j: a for a, j in cls.attribute_map.items()}
    errors = [f"{path}.{k}: unknown field of {type_name}" for k in value if k not in by_json]
    for k, v in value.items():
        if k in by_json:
            errors += check_openapi(v, cls.openapi_types[by_json[k]], f"{path}.{k}")
    if not errors:
        try:  # the generated constructors raise on a missing required field or a bad enum value
            cls(**{by_json[k]: v for k, v in value.items()})
        except ValueError as exc:
            errors.append(f"{path}: {exc}")
    return errors


def check_pydantic(value, tp, path: str = "$") -> list[str]:
    """``value`` against a kubeflow-trainer-api (pydantic) type, rejecting unknown fields."""
    from pydantic import BaseModel

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return check_pydantic(value, inner[0], path) if len(inner) == 1 else []
    if origin in (list, typing.List):
        return [e for i, v in enumerate(value) for e in check_pydantic(v, args[0], f"{path}[{i}]")]
    if origin in (dict, typing.Dict):
        return [e for k, v in value.items() for e in check_pydantic(v, args[1], f"{path}.{k}")]
    if isinstance(tp, type) and tp.__name__.endswith(("ResourceQuantity", "IntOrString")):  # scalars in JSON
        return [] if isinstance(value, (str, int)) else [f"{path}: expected a quantity, got {value!r}"]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if not isinstance(value, dict):
            return [f"{path}: expected a {tp.__name__} mapping"]
        by_alias = {(f.alias or n): f for n, f in tp.model_fields.items()}
        errors = [f"{path}.{k}: unknown field of {tp.__name__}" for k in value if k not in by_alias]
        for k, v in value.items():
            if k in by_alias:
                errors += check_pydantic(v, by_alias[k].annotation, f"{path}.{k}")
        return errors
    return []


def validate_pytorchjob(doc: dict) -> list[str]:
    from kubeflow.training.models import KubeflowOrgV1PyTorchJob  # noqa: F401  (the type check_openapi resolves)
    import kubernetes_validate

    errors = check_openapi(doc, "KubeflowOrgV1PyTorchJob")
    for role, rs in doc["spec"]["pytorchReplicaSpecs"].items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", **rs["template"].get("metadata", {})},
               "spec": rs["template"]["spec"]}
        try:
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{role} pod template: {exc.message}")
        if [c["name"] for c in rs["template"]["spec"]["containers"]] != ["pytorch"]:
            errors.append(f"{role}: the operator needs the container named 'pytorch'")
    return errors


def validate_trainjob(doc: dict) -> list[str]:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    errors = check_pydantic(doc, TrainerV1alpha1TrainJob)
    if not errors:
        try:
            TrainerV1alpha1TrainJob.from_dict(doc)
        except Exception as exc:  # pydantic's ValidationError: strict types (StrictInt, StrictStr)
            errors.append(str(exc).splitlines()[0])
    return errors


def _settings(**kw) -> JobSettings:
    from kadet.kubeflow.platform import Platform

    plat = Platform.load()
    plat.gpu_count = kw.pop("gpus", 4)
    plat.trainer_nodes = kw.pop("nodes", 1)
    return JobSettings.from_json(plat.trainer_job("registry.example.com/kadet:1-cuda"))


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_pytorchjob_validates_strictly(nodes):
    s = _settings(nodes=nodes)
    doc = render(s, "PyTorchJob", "kadet-distill-abc", "team-a", "/var/cache/kadet/distill-jobs/abc")
    assert validate_pytorchjob(doc) == []
    specs = doc["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs.get("Worker", {"replicas": 0})["replicas"] == nodes - 1
    assert doc["spec"]["nprocPerNode"] == "4"
    pod = specs["Master"]["template"]["spec"]
    (c,) = pod["containers"]
    # the job's own entry point, not the user CLI: the config travels as the job folder's file
    assert c["command"] == ["torchrun", "-m", "kadet.kubeflow.distill_worker", "/var/cache/kadet/distill-jobs/abc"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4" and c["securityContext"]["runAsNonRoot"] is True
    assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v} \
        == {"kadet-model-cache"}
    envs = {e["name"]: e for e in c["env"]}
    assert envs["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "kadet-minio", "key": "secret-key"}
    assert pod["nodeSelector"] == {"kadet.io/pool": "gpu"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_trainjob_validates_strictly(nodes):
    s = _settings(nodes=nodes)
    doc = render(s, "TrainJob", "kadet-distill-abc", "team-a", "/var/cache/kadet/distill-jobs/abc")
    assert validate_trainjob(doc) == []
    t = doc["spec"]["trainer"]
    assert t["numNodes"] == nodes and t["numProcPerNode"] == 4 and t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert doc["spec"]["runtimeRef"]["name"] == "torch-distributed"
    pod = doc["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"][
        "spec"]["template"]["spec"]
    assert {v["name"] for v in pod["volumes"]} == {"dshm", "kadet-work"} and pod["containers"][0]["name"] == "node"


def test_the_checkers_catch_violations():
    s = _settings()
    doc = render(s, "PyTorchJob", "j", "ns", "/w")
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["replicaCount"] = 1          # no such field
    doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["ports"] = [{"port": 1}]
    errors = validate_pytorchjob(doc)
    assert any("replicaCount" in e for e in errors) and any("ports" in e or "containerPort" in e for e in errors), errors
    tj = render(s, "TrainJob", "j", "ns", "/w")
    tj["spec"]["trainer"]["numProcsPerNode"] = 4                               # misspelt
    tj2 = render(s, "TrainJob", "j", "ns", "/w")
    tj2["spec"]["trainer"]["numNodes"] = "2"                                   # a string where an int belongs
    assert any("numProcsPerNode" in e for e in validate_trainjob(tj)) and validate_trainjob(tj2)


def test_one_gpu_trains_in_the_task_and_several_launch_a_job(tmp_path):
    from kadet.kubeflow.compile import compile_pipeline

    plat = yaml.safe_load((ROOT / "kadet" / "kubeflow" / "platform.yaml").read_text())
    for gpus in (1, 2):
        path = tmp_path / f"platform-{gpus}.yaml"
        path.write_text(yaml.safe_dump({**plat, "gpu_count": gpus}))
        docs = list(yaml.safe_load_all(compile_pipeline(tmp_path / f"p{gpus}.yaml", platform=path).read_text()))
        task = next(c["dag"]["tasks"]["distill"] for c in docs[0]["components"].values()
                    if "distill" in c.get("dag", {}).get("tasks", {}))
        arg = task["inputs"]["parameters"]["trainer_job"]["runtimeValue"]["constant"]
        executors = docs[0]["deploymentSpec"]["executors"]
        gpu = executors["exec-distill"]["container"]["resources"].get("accelerator")
        assert executors["exec-label"]["container"]["resources"]["accelerator"]["count"] == "1"  # one process
        if gpus == 1:
            assert arg == "" and gpu["count"] == "1"
        else:  # the task is a launcher (no GPU); the job holds them
            assert gpu is None and JobSettings.from_json(arg).gpus_per_node == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_as_the_operator_would(manifest: dict) -> None:
    """Run the Master container's command of a rendered PyTorchJob here, with the variables the
    Training Operator sets for ``nprocPerNode`` (one node; the image's PATH is the venv's)."""
    (c,) = manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "PET_NNODES": "1", "PET_NODE_RANK": "0", "PET_NPROC_PER_NODE": manifest["spec"]["nprocPerNode"],
           "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(_free_port())}
    env.update({e["name"]: e["value"] for e in c["env"] if "value" in e and e["name"] != "MLFLOW_TRACKING_URI"})
    proc = subprocess.run(c["command"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_rendered_job_command_trains_data_parallel(tiny_st, tmp_path):
    labels = _labels(tmp_path / "labels.jsonl")
    cfg = load_config(None, [f"retrieval.model={tiny_st}", f"work_dir={tmp_path / 'pvc'}", "distill.batch_size=8",
                             "distill.chunk_size=5", "distill.epochs=2", "distill.lr=1e-3", "distill.progress=false",
                             "distill.passage_max_len=32", "distill.query_max_len=16", "distill.device=cpu"])
    s = _settings(gpus=2)
    s.kind = "PyTorchJob"
    seen = []
    # the pipeline's distill step as its component calls it (MLflow logging included)
    counts = distill_step(cfg, str(labels), str(tmp_path / "out"), "run-1", trainer_job=s.to_json(),
                          launch=lambda m: (seen.append(m), run_as_the_operator_would(m)))
    assert counts["train_queries"] == 20 and counts["best_epoch"] in (1, 2)
    job_dir = Path(seen[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"][3])
    assert job_dir.parent == tmp_path / "pvc" / "distill-jobs" and validate_pytorchjob(seen[0]) == []
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["extra"]["processes"] == 2 and m["counts"]["train_queries"] == 20 and m["counts"]["epochs"] == 2
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "out" / "model"), device="cpu").encode(["aspirin"]).shape == (1, 32)
    assert not (tmp_path / "out" / "checkpoints").exists()
    # a retried task: same labels and config, same job folder (the job resumes from its checkpoints)
    again = distill_as_job(cfg, labels, tmp_path / "out2", s, launch=lambda m: seen.append(m))
    assert again == job_dir and seen[1]["metadata"]["name"] == seen[0]["metadata"]["name"]


class FakeCustomObjects:
    """Fault injection: a Kubernetes API holding jobs whose status the test scripts."""

    def __init__(self, existing=None, statuses=None, unknown_spec_fields=()):
        self.jobs = dict(existing or {})
        self.statuses = list(statuses or [])
        self.created = []
        #: Fields of ``spec`` this API server's CRD does not declare (an older operator's).
        self.unknown = set(unknown_spec_fields)

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        from kubernetes.client.rest import ApiException

        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        if name in self.created and self.statuses:
            self.jobs[name] = {**self.jobs[name], "status": {"conditions": [self.statuses.pop(0)]}}
        return self.jobs[name]

    def create_namespaced_custom_object(self, group, version, ns, plural, body, field_validation=None):
        from kubernetes.client.rest import ApiException

        assert field_validation == "Strict"          # else an older operator's CRD silently drops a field
        unknown = sorted(self.unknown & set(body["spec"]))
        if unknown:   # what the API server answers a Strict create with an undeclared field
            exc = ApiException(status=400, reason="Bad Request")
            exc.body = json.dumps({"kind": "Status", "status": "Failure", "reason": "BadRequest", "code": 400,
                                   "message": f'{body["kind"]} in version "{version}" cannot be handled as a '
                                              f'{body["kind"]}: strict decoding error: unknown field "spec.{unknown[0]}"'})
            raise exc
        self.jobs[body["metadata"]["name"]] = body
        self.created.append(body["metadata"]["name"])


def _cond(type_="Succeeded", msg=""):
    return {"type": type_, "status": "True", "message": msg}


def test_the_job_lifecycle_against_a_fake_api():
    doc = render(_settings(), "PyTorchJob", "kadet-distill-k", "team-a", "/w")
    running = {"type": "Running", "status": "True"}
    api = FakeCustomObjects(statuses=[running, running, _cond()])
    assert run_job(doc, api, poll_s=0) == "kadet-distill-k-1" and api.created == ["kadet-distill-k-1"]
    # a retried task re-attaches to the job of its name that has not failed (creates nothing)
    api2 = FakeCustomObjects(existing={"kadet-distill-k-1": {"status": {"conditions": [_cond("Succeeded")]}}})
    assert run_job(doc, api2, poll_s=0) == "kadet-distill-k-1" and api2.created == []
    # an earlier try failed: that job stays for its logs, the next attempt gets a new name
    api3 = FakeCustomObjects(existing={"kadet-distill-k-1": {"status": {"conditions": [_cond("Failed", "OOM")]}}},
                             statuses=[_cond()])
    assert run_job(doc, api3, poll_s=0) == "kadet-distill-k-2" and api3.created == ["kadet-distill-k-2"]
    # this try fails: the error names the job and the operator's message
    api4 = FakeCustomObjects(statuses=[_cond("Failed", "rank 1 exited with code 137")])
    with pytest.raises(KadetError, match=re.escape("PyTorchJob team-a/kadet-distill-k-1 failed: rank 1 exited")):
        run_job(doc, api4, poll_s=0)
    assert state("TrainJob", {"status": {"conditions": [{"type": "Complete", "status": "True"}]}})[0] == "succeeded"


def test_a_job_that_never_starts_fails_the_task_saying_which_job_and_why():
    """Was: the distill task waited 7 days for its Trainer job, whatever it did: a job whose pods
    stayed Pending for a GPU held the run, and with it the schedule (max_concurrency 1). Now the
    wait is the setting distill.trainer_wait_s, counted from the job's creation (a retried task
    that re-attaches does not start the clock again), and the error names the job and its state."""
    from kadet.core.config import DistillConfig
    from kadet.kubeflow.trainjob import JobSettings, stalled_text

    doc = render(_settings(), "PyTorchJob", "kadet-distill-k", "team-a", "/w")
    old = {"metadata": {"creationTimestamp": "2020-01-01T00:00:00Z"}, "status": {}}
    api = FakeCustomObjects(existing={"kadet-distill-k-1": old})          # a retry re-attaches: long past its bound
    with pytest.raises(KadetError, match=r"PyTorchJob team-a/kadet-distill-k-1 has not finished after \d+ s "
                                         r"\(distill.trainer_wait_s = 3600\); it has no condition yet: its pods have "
                                         r"not started \(Pending: no node with a free GPU\?\)"):
        run_job(doc, api, poll_s=0, timeout_s=3600)
    assert api.created == []
    running = {"status": {"conditions": [{"type": "Running", "status": "True", "reason": "PyTorchJobRunning",
                                          "message": "job is running"}]}}
    text = stalled_text("TrainJob", "ns", "j-1", running, 7200, 3600)
    assert "its last condition is Running (PyTorchJobRunning: job is running)" in text
    assert "kubectl -n ns describe trainjob j-1" in text
    assert DistillConfig().trainer_wait_s == 86400
    assert "timeout_s" not in JobSettings.from_json('{"image": "i", "gpus_per_node": 2, "timeout_s": 5}').to_json()


def test_a_trainer_older_than_2_2_is_named_not_silently_given_a_job_without_its_volume():
    """Was: kadet's TrainJob puts the PVC, node selector, tolerations and security context in
    ``spec.runtimePatches``, a field Kubeflow Trainer has only from v2.2.0 on (2.0/2.1:
    ``podTemplateOverrides``), while the docs said "Trainer 2.x"; created without strict
    validation, an older Trainer's API server drops the unknown field and the job runs without its
    work volume. Now the create is strict and the refusal names the Trainer version needed."""
    doc = render(_settings(), "TrainJob", "kadet-distill-k", "team-a", "/w")
    api = FakeCustomObjects(unknown_spec_fields={"runtimePatches"})
    with pytest.raises(KadetError, match=r"needs Kubeflow Trainer >= 2\.2; upgrade it, or set trainer_kind: PyTorchJob"):
        run_job(doc, api, poll_s=0)
    assert api.created == []
    ok = FakeCustomObjects(statuses=[{"type": "Complete", "status": "True"}])   # Trainer >= 2.2
    assert run_job(doc, ok, poll_s=0) == "kadet-distill-k-1"
