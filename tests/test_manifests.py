"""Every kustomize overlay renders (``kubectl kustomize``), validates against the Kubernetes
schemas (``kubernetes-validate --strict``), carries no literal credential, and every container
sets requests, limits and a restricted securityContext."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

MANIFESTS = REPO / "manifests"
TARGETS = ["base", "overlays/dev", "overlays/prod"]
K8S_VERSION = "1.32.0"
CREDENTIAL = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PASSWD|CREDENTIAL)", re.I)


def render(target: str) -> str:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render the kustomize overlays"
    proc = subprocess.run([kubectl, "kustomize", str(MANIFESTS / target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def containers(doc: dict) -> tuple[dict, list[dict]]:
    """(pod spec, its containers and init containers) of a workload, or ({}, [])."""
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if not pod:
        return {}, []
    return pod, pod.get("containers", []) + pod.get("initContainers", [])


def problems(docs: list[dict]) -> list[str]:
    """Every violation of the house rules in rendered manifests (empty = clean)."""
    out = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            out.append(f"{name}: a Secret with literal data")
        pod, cs = containers(doc)
        for c in cs:
            where = f"{name} container {c['name']}"
            for env in c.get("env", []):
                if CREDENTIAL.search(env["name"]) and "value" in env:
                    out.append(f"{where}: env {env['name']} has a literal value")
            for arg in c.get("args", []) + c.get("command", []):
                m = re.search(r"://[^:/@\s]+:([^@\s]+)@", str(arg))
                if m and not m.group(1).startswith("$("):
                    out.append(f"{where}: a literal password in {arg!r}")
                elif m:  # expanded by the kubelet into the process's arguments: visible to `ps`
                    out.append(f"{where}: a password on the command line in {arg!r}")
            res = c.get("resources", {})
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in res.get(kind, {}):
                        out.append(f"{where}: no {kind}.{r}")
            sc = c.get("securityContext", {})
            if not (sc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")):
                out.append(f"{where}: runAsNonRoot is not set")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                out.append(f"{where}: privileged")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                out.append(f"{where}: capabilities not dropped")
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_overlay_renders_and_validates_strictly(target, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(render(target))
    exe = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(exe), "--strict", "-k", K8S_VERSION, "--quiet", str(rendered)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered.read_text()) if d}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "PersistentVolumeClaim", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("target", TARGETS)
def test_no_literal_credentials_and_every_container_is_bounded_and_non_root(target):
    docs = [d for d in yaml.safe_load_all(render(target)) if d]
    assert problems(docs) == []
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for d in docs for c in containers(d)[1] for e in c.get("env", [])
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}
    assert refs == {"kadet-minio", "kadet-postgres", "kadet-mlflow-admin", "kadet-mlflow-client",
                    "kadet-minio-pipeline"}  # created out of band


def test_the_checker_catches_violations():
    bad = [{"kind": "Secret", "metadata": {"name": "s"}, "stringData": {"password": "hunter2"}},
           {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": [
               {"name": "c", "env": [{"name": "DB_PASSWORD", "value": "hunter2"}],
                "args": ["--uri=postgresql://u:hunter2@db/x", "--db=postgresql://u:$(DB_PASSWORD)@db/x"],
                "resources": {"requests": {"cpu": "1"}}}]}}}}]
    found = problems(bad)
    for expected in ("Secret with literal data", "env DB_PASSWORD has a literal value", "literal password",
                     "password on the command line",
                     "no requests.memory", "no limits.cpu", "runAsNonRoot", "allowPrivilegeEscalation",
                     "capabilities"):
        assert any(expected in p for p in found), expected


def test_the_gpu_workload_requests_a_gpu_on_the_gpu_pool():
    tgi = next(d for d in yaml.safe_load_all(render("overlays/prod")) if d and d["metadata"]["name"] == "tgi"
               and d["kind"] == "Deployment")
    pod, (c,) = containers(tgi)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and pod["nodeSelector"] == {"kadet.io/pool": "gpu"}
    pvc = next(d for d in yaml.safe_load_all(render("overlays/prod")) if d and d["metadata"]["name"] == "tgi-model-cache")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]                 # was RWO: a second replica could not mount it


def _status(uri: str, path: str, host_header: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(uri + path, headers={"Host": host_header})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_mlflow_accepts_the_pipeline_pods_host_header(tmp_path):
    """A real ``mlflow server`` bound to 0.0.0.0 and called as pipeline pods call it
    (Host: mlflow.kadet.svc.cluster.local:5000, the platform's MLFLOW_TRACKING_URI): with the
    manifest's ``--allowed-hosts`` the REST API answers; without it (was: the manifest set none)
    MLflow >= 3.5 answers 403 while /health says 200, so readiness passed and every call failed."""
    from urllib.parse import urlparse

    from tests.mlflowserver import mlflow_server

    docs = [d for d in yaml.safe_load_all(render("base")) if d]
    mlflow = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "mlflow")
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = [a for a in args if a.startswith("--allowed-hosts=")]
    assert allowed, "the MLflow Deployment sets no --allowed-hosts"
    platform = yaml.safe_load((REPO / "pipelines" / "platform.yaml").read_text())
    tracking = next(v for k, v in _walk_items(platform) if k == "MLFLOW_TRACKING_URI")
    cluster_host = urlparse(tracking).netloc                    # mlflow.kadet.svc.cluster.local:5000
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    with mlflow_server(tmp_path / "without", host="0.0.0.0") as uri:
        assert _status(uri, "/health", cluster_host) == 200 and _status(uri, api, cluster_host) == 403
    with mlflow_server(tmp_path / "with", host="0.0.0.0", extra_args=(allowed[0],)) as uri:
        assert _status(uri, api, cluster_host) == 200
        assert _status(uri, api, "localhost:5000") == 200          # kubectl port-forward
        assert _status(uri, api, "evil.example.com") == 403        # still not any host


def _walk_items(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk_items(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_items(v)


#: Install modes of Kubeflow Pipelines: where a run's pods run.
ACCESS = {"standalone": "kubeflow", "profile": "kubeflow-user-example-com"}


def render_access(mode: str, tmp_path: Path) -> list[dict]:
    """``manifests/pipeline-access/<mode>`` rendered with the Secrets' env files a user writes
    (here: placeholder values in a copy; the real files are never committed)."""
    copy = tmp_path / "pipeline-access"
    shutil.copytree(MANIFESTS / "pipeline-access", copy, dirs_exist_ok=True)
    for example in (copy / "base" / "secrets").glob("*.env.example"):
        example.with_suffix("").write_text("".join(f"{line.split('=')[0]}=placeholder\n" for line in
                                                   example.read_text().splitlines() if "=" in line))
    proc = subprocess.run([shutil.which("kubectl"), "kustomize", str(copy / mode)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rendered = tmp_path / f"{mode}.yaml"
    rendered.write_text(proc.stdout)
    exe = Path(sys.executable).parent / "kubernetes-validate"
    check = subprocess.run([str(exe), "--strict", "-k", K8S_VERSION, "--quiet", str(rendered)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize("mode", sorted(ACCESS))
def test_everything_the_pipeline_pods_use_exists_where_they_run(mode, tmp_path):
    """Was: the Secrets, the PVC and the runner's ServiceAccount existed only in namespace kadet,
    while KFP runs a run's pods in kubeflow (standalone) or the user's profile namespace, so no
    pod could start; the account's token was not mounted though the KFP launcher needs it."""
    from pipelines.compile import DEFAULT_OUTPUT
    from pipelines.remote import DEFAULT_SERVICE_ACCOUNT

    docs = render_access(mode, tmp_path)
    where = {(d["kind"], d["metadata"]["name"]): d["metadata"].get("namespace") for d in docs}
    platform = list(yaml.safe_load_all(DEFAULT_OUTPUT.read_text()))[1]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
    secrets = {s["secretName"] for ex in executors for s in ex.get("secretAsEnv", [])}
    pvcs = {p["constant"] for ex in executors for p in ex.get("pvcMount", [])}
    needed = ({("Secret", n) for n in secrets} | {("PersistentVolumeClaim", n) for n in pvcs}
              | {("ServiceAccount", DEFAULT_SERVICE_ACCOUNT)})
    assert secrets and pvcs
    assert {k: where.get(k) for k in needed} == {k: ACCESS[mode] for k in needed}
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["automountServiceAccountToken"] is True
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": DEFAULT_SERVICE_ACCOUNT,
                                    "namespace": ACCESS[mode]}]
    assert all(not d.get("data") or set(d["data"]) <= {"access-key", "secret-key", "tracking-username",
                                                       "tracking-password"} for d in docs if d["kind"] == "Secret")


def test_the_runner_role_is_least_privilege(tmp_path):
    """Was: a RoleBinding of ClusterRole ``edit`` (every Secret of the namespace, create and delete
    anything) for KFP's runner. Now: no cluster-wide grant, no wildcard, no delete, Secrets,
    ConfigMaps and the PVC by name only."""
    docs = render_access("standalone", tmp_path)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        if {"secrets", "configmaps", "persistentvolumeclaims"} & set(rule["resources"]):
            assert rule.get("resourceNames") and rule["verbs"] == ["get"], rule
    assert not [d for d in yaml.safe_load_all(render("base")) if d and d["kind"] in ("RoleBinding", "ClusterRoleBinding")]


def test_the_services_admit_pipeline_pods_from_their_namespaces():
    """Was: ``podSelector`` alone, which admits pods of namespace kadet only: every call from a
    pipeline pod (in kubeflow or a profile namespace) to MinIO, MLflow or TGI was dropped."""
    policies = {d["metadata"]["name"]: d for d in yaml.safe_load_all(render("base")) if d and d["kind"] == "NetworkPolicy"}
    pipeline = {"kadet.io/role": "pipeline"}
    for name in ("minio-clients", "mlflow-clients", "tgi-clients"):
        sources = [src for rule in policies[name]["spec"]["ingress"] for src in rule["from"]]
        admitted = {tuple(sorted(src["namespaceSelector"]["matchLabels"].items())) for src in sources
                    if src.get("podSelector", {}).get("matchLabels") == pipeline and "namespaceSelector" in src}
        assert admitted == {(("kubernetes.io/metadata.name", "kubeflow"),),
                            (("app.kubernetes.io/part-of", "kubeflow-profile"),)}, name


def test_the_buckets_are_created():
    """Was: nothing created the bucket MLflow stores artifacts in (or kadet's). A Job makes both,
    idempotently, with MinIO's own image; MinIO admits it; it passes the house checks."""
    docs = [d for d in yaml.safe_load_all(render("overlays/prod")) if d]
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "minio-buckets"]
    assert problems([job]) == []
    script = " ".join(containers(job)[1][0]["args"])
    mlflow = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    dest = next(a for a in containers(mlflow)[1][0]["args"] if a.startswith("--artifacts-destination="))
    bucket = dest.split("s3://")[1].split("/")[0]
    assert "mc mb --ignore-existing" in script and f"kadet/{bucket}" in script and "kadet/kadet" in script
    minio = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "minio-clients")
    assert {"podSelector": {"matchLabels": {"app": "minio-buckets"}}} in minio["spec"]["ingress"][0]["from"]


def test_the_pipeline_gets_its_own_minio_user_not_the_root_pair():
    """Was: MinIO's root pair went to every pipeline step. Now the buckets Job makes a user from
    Secret kadet-minio-pipeline with policy kadet-pipeline: objects and listing of bucket kadet,
    nothing on MLflow's bucket, no admin or bucket-policy actions. (Checked statically: no MinIO
    server runs here.)"""
    import json

    docs = [d for d in yaml.safe_load_all(render("base")) if d]
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "minio-buckets"]
    (mc,) = containers(job)[1]
    env = {e["name"]: e for e in mc["env"]}
    assert env["PIPELINE_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "kadet-minio-pipeline"
    policy = json.loads(env["PIPELINE_POLICY"]["value"])
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    actions = {a for st in policy["Statement"] for a in st["Action"]}
    assert resources == {"arn:aws:s3:::kadet", "arn:aws:s3:::kadet/*"}
    assert all(st["Effect"] == "Allow" for st in policy["Statement"]) and not any("*" in a for a in actions)
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions
    assert not {a for a in actions if a.startswith("admin:") or "Policy" in a or a.startswith("s3:CreateBucket")}
    script = " ".join(mc["args"])
    for step in ("mc admin policy create kadet kadet-pipeline", "mc admin user add kadet \"$PIPELINE_ACCESS_KEY\"",
                 "mc admin policy attach kadet kadet-pipeline --user"):
        assert step in script, step
    example = (MANIFESTS / "pipeline-access" / "base" / "secrets" / "kadet-minio.env.example").read_text()
    assert "not MinIO's root pair" in example


def test_mlflow_refuses_anonymous_calls_and_guards_the_champion_alias(tmp_path):
    """Was: no auth, so anyone who reached MLflow could move the ``champion`` alias. A real
    ``mlflow server`` started through the image's entry point with the Deployment's arguments
    and auth environment, its pipeline user made by the manifest's own ``mlflow-users`` Job
    script: anonymous calls get 401 (``/health`` stays open), the pipeline user registers a
    model and moves its alias, another user reads but cannot move it (403)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    from tests.mlflowserver import mlflow_server

    docs = [d for d in yaml.safe_load_all(render("base")) if d]
    dep = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "mlflow")
    (server,) = dep["spec"]["template"]["spec"]["containers"]
    assert "--app-name=basic-auth" in server["args"]
    env = {e["name"]: e for e in server["env"]}
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "kadet-mlflow-admin"
    job = next(d for d in docs if d.get("kind") == "Job" and d["metadata"]["name"] == "mlflow-users")
    (users,) = job["spec"]["template"]["spec"]["containers"]
    assert users["command"] == ["python", "-c"]

    auth_ini = tmp_path / "auth" / "basic_auth.ini"
    secrets = {"MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path / 'auth.db'}", "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
               "MLFLOW_AUTH_DEFAULT_PERMISSION": env["MLFLOW_AUTH_DEFAULT_PERMISSION"]["value"],
               "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-Secret-123",
               "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-Secret-000"}
    assert {n for n in secrets if n.startswith("MLFLOW_") and n in env} >= {
        "MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    flags = tuple(a for a in server["args"] if a.startswith(("--app-name", "--allowed-hosts")))
    with mlflow_server(tmp_path / "srv", extra_env=secrets, extra_args=flags,
                       entrypoint=REPO / "images" / "mlflow-entrypoint.sh") as uri:
        assert oct(auth_ini.stat().st_mode & 0o777) == "0o600" and "auth.db" in auth_ini.read_text()
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(uri, "/health", "localhost:5000") == 200 and _status(uri, api, "localhost:5000") == 401

        job_env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": "admin",
                   "MLFLOW_TRACKING_PASSWORD": "admin-Secret-123", "PIPELINE_USER": "kadet-pipeline",
                   "PIPELINE_PASSWORD": "pipeline-Secret-456"}
        for _ in range(2):  # idempotent: a second run sets the password again
            proc = subprocess.run([sys.executable, "-c", users["args"][0]], env=job_env, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr[-2000:]
        assert "exists; password set" in proc.stdout

        def as_user(name, password):
            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = name, password
            return mlflow.MlflowClient(uri, registry_uri=uri)

        try:
            pipeline = as_user("kadet-pipeline", "pipeline-Secret-456")
            exp = pipeline.create_experiment("kadet")
            run = pipeline.create_run(exp)
            pipeline.create_registered_model("kadet-embedding")
            mv = pipeline.create_model_version("kadet-embedding", f"runs:/{run.info.run_id}/model", run.info.run_id)
            pipeline.set_registered_model_alias("kadet-embedding", "champion", mv.version)

            os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", "admin-Secret-123"
            AuthServiceClient(uri).create_user("someone", "someone-Secret-789")
            other = as_user("someone", "someone-Secret-789")
            assert other.get_model_version_by_alias("kadet-embedding", "champion").version == mv.version  # reads
            with pytest.raises(MlflowException, match="PERMISSION_DENIED|403"):
                other.set_registered_model_alias("kadet-embedding", "champion", mv.version)
            with pytest.raises(MlflowException, match="401|nauthorized|credentials"):
                as_user("kadet-pipeline", "wrong").search_experiments()
            # the admin grants a person EDIT on the model (as manifests/README.md says): now they may
            as_user("admin", "admin-Secret-123")
            AuthServiceClient(uri).grant_user_permission("someone", "registered_model", "kadet-embedding", "EDIT")
            as_user("someone", "someone-Secret-789").set_registered_model_alias("kadet-embedding", "champion", mv.version)
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
            os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
