"""Kubernetes settings for the compiled pipeline, read from ``kadet/kubeflow/platform.yaml``.

GPU accelerator, node selector, tolerations and ``/dev/shm`` on the GPU steps; the model-cache
PVC, Secrets as env, endpoint env and requests/limits on every step. Applied with
kfp-kubernetes at compile time; the local runner never sees them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kadet.core.io import read_text

DEFAULT_PLATFORM = Path(__file__).with_name("platform.yaml")


@dataclass
class Platform:
    gpu_steps: list[str] = field(default_factory=list)
    accelerator: str = "nvidia.com/gpu"
    gpu_count: int = 1
    shm_size: str = "2Gi"
    gpu_node_selector: dict[str, str] = field(default_factory=dict)
    gpu_tolerations: list[dict] = field(default_factory=list)
    pod_labels: dict[str, str] = field(default_factory=dict)
    cache_pvc: str = ""
    cache_mount: str = "/var/cache/kadet"
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Pod field whose value keys the pipeline run (env KADET_PIPELINE_RUN) instead of a task input.
    run_key_field: str = ""
    #: Pod field holding the KFP run's id (env KADET_KFP_RUN_ID, tagged on the MLflow parent run).
    kfp_run_field: str = ""
    #: Seconds each step's pod may run (its activeDeadlineSeconds; "default" for the rest; 0 = none).
    timeouts: dict[str, int] = field(default_factory=dict)
    #: Seconds a whole run may take (the Argo workflow's activeDeadlineSeconds; 0 = none).
    deadline_s: int = 0
    #: run_as_user, run_as_group, run_as_non_root: the Trainer job's and the staging Job's containers.
    security_context: dict[str, object] = field(default_factory=dict)
    #: Also on the pipeline's own containers (kfp-kubernetes' set_security_context): a field the KFP
    #: backend knows from 2.16.0 on (older ones refuse the run), so off unless asked for; ``kadet
    #: submit`` then refuses a backend older than 2.16 (kadet.kubeflow.remote.package_floor).
    kfp_security_context: bool = False
    #: gpu_count > 1: the distill task launches a Kubeflow Trainer job of ``trainer_nodes`` nodes x
    #: gpu_count GPUs (kadet/kubeflow/trainjob.py): kind auto (what the cluster serves), PyTorchJob or TrainJob.
    trainer_kind: str = "auto"
    trainer_nodes: int = 1
    trainer_runtime: str = "torch-distributed"

    def timeout(self, step: str) -> int:
        """Seconds ``step``'s pod may run (``timeouts``: the step's, else ``default``; 0 = no limit)."""
        return int(self.timeouts.get(step, self.timeouts.get("default", 0)))

    @property
    def distill_as_job(self) -> bool:
        return "distill" in self.gpu_steps and (self.gpu_count > 1 or self.trainer_nodes > 1)

    def trainer_job(self, image: str) -> str:
        """The distill task's ``trainer_job`` argument: JSON :class:`kadet.kubeflow.trainjob.JobSettings`,
        or "" when distill trains in its own pod (one GPU)."""
        if not self.distill_as_job:
            return ""
        from kadet.kubeflow.trainjob import JobSettings

        res = self.resources.get("distill", self.resources.get("default", {}))
        return JobSettings(image=image, gpus_per_node=self.gpu_count, nodes=self.trainer_nodes, kind=self.trainer_kind,
                           runtime=self.trainer_runtime, accelerator=self.accelerator,
                           resources={k: res[k] for k in ("cpu", "memory") if k in res}, env=self.pod_env(),
                           pvc=self.cache_pvc, mount=self.cache_mount, node_selector=dict(self.gpu_node_selector),
                           tolerations=list(self.gpu_tolerations), security_context=self.k8s_security_context(),
                           labels=dict(self.pod_labels), shm_size=self.shm_size).to_json()

    def pod_env(self) -> list[dict]:
        """The steps' environment as Kubernetes ``env`` entries: the endpoints, then the Secrets' keys."""
        env = [{"name": k, "value": v} for k, v in self.env.items()]
        return env + [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                      for secret, keys in self.secrets.items() for key, var in keys.items()]

    def k8s_security_context(self) -> dict:
        """``security_context`` with Kubernetes' field names (runAsUser, ...)."""
        return {"".join(w.capitalize() if i else w for i, w in enumerate(k.split("_"))): v
                for k, v in self.security_context.items()}

    def stage_job(self, image: str, src: str, dest: str, namespace: str) -> dict:
        """A Job that runs ``kadet models stage SRC DEST`` where pipeline pods run (``namespace``),
        with their identity, endpoints, Secrets and the model-cache volume: how a model in the
        bucket gets onto that volume (``kadet models job``, then ``kubectl create -f -``)."""
        from kadet.core.errors import KadetError

        mount = self.cache_mount.rstrip("/")
        if not dest.startswith(mount + "/"):
            raise KadetError(f"{dest}: the Job writes to the model-cache volume: give a path under {mount}/, "
                             f"e.g. {mount}/models/<name>")
        if not src.startswith("s3://"):
            raise KadetError(f"{src}: the Job's pod sees the bucket, not this machine: stage the model into "
                             "s3://... first (kadet models stage FOLDER s3://kadet/models/<name>)")
        res = self.resources.get("default", {})
        container = {
            "name": "stage", "image": image, "command": ["kadet", "models", "stage", src, dest],
            "env": self.pod_env(), "resources": {"requests": dict(res), "limits": dict(res)},
            "securityContext": {**self.k8s_security_context(), "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "cache", "mountPath": mount}, {"name": "tmp", "mountPath": "/tmp"}]}
        pod = {"restartPolicy": "Never", "automountServiceAccountToken": False,
               "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
               "containers": [container],
               "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": self.cache_pvc}},
                           {"name": "tmp", "emptyDir": {}}]}
        return {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"generateName": "kadet-stage-model-", "namespace": namespace,
                             "labels": {"app.kubernetes.io/part-of": "kadet", "app.kubernetes.io/name": "kadet-stage-model"}},
                "spec": {"backoffLimit": 2, "ttlSecondsAfterFinished": 86400,
                         "template": {"metadata": {"labels": dict(self.pod_labels)}, "spec": pod}}}

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PLATFORM) -> "Platform":
        data = yaml.safe_load(read_text(path)) or {}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}")
        return cls(**data)

    def apply(self, task, step: str) -> None:
        """Put this platform's settings on one pipeline task (``step`` = its component name)."""
        from kfp import kubernetes

        res = self.resources.get(step, self.resources.get("default", {}))
        if "cpu" in res:
            task.set_cpu_request(res["cpu"]).set_cpu_limit(res["cpu"])
        if "memory" in res:
            task.set_memory_request(res["memory"]).set_memory_limit(res["memory"])
        for name, value in self.env.items():
            task.set_env_variable(name, value)
        if self.run_key_field:
            from kadet.core.layout import RUN_KEY_ENV

            kubernetes.use_field_path_as_env(task, env_name=RUN_KEY_ENV, field_path=self.run_key_field)
        if self.kfp_run_field:
            from kadet.core.layout import KFP_RUN_ENV

            kubernetes.use_field_path_as_env(task, env_name=KFP_RUN_ENV, field_path=self.kfp_run_field)
        if self.timeout(step):
            kubernetes.set_timeout(task, self.timeout(step))
        if self.security_context and self.kfp_security_context:
            kubernetes.set_security_context(task, **self.security_context)
        for key, value in self.pod_labels.items():
            kubernetes.add_pod_label(task, label_key=key, label_value=value)
        for secret, keys in self.secrets.items():
            kubernetes.use_secret_as_env(task, secret_name=secret, secret_key_to_env=keys)
        if self.cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=self.cache_pvc, mount_path=self.cache_mount)
        if step in self.gpu_steps and not (step == "distill" and self.distill_as_job):  # a launcher: no GPU
            # one GPU per pod: only distillation uses more, and it does so as a Trainer job
            task.set_accelerator_type(self.accelerator).set_accelerator_limit(1)
            for key, value in self.gpu_node_selector.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for tol in self.gpu_tolerations:
                kubernetes.add_toleration(task, **tol)
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=self.shm_size)
