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

    from tests.doubles.mlflowserver import mlflow_server

    docs = [d for d in yaml.safe_load_all(render("base")) if d]
    mlflow = next(d for d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "mlflow")
    args = mlflow["spec"]["template"]["spec"]["containers"][0]["args"]
    allowed = [a for a in args if a.startswith("--allowed-hosts=")]
    assert allowed, "the MLflow Deployment sets no --allowed-hosts"
    platform = yaml.safe_load((REPO / "kadet" / "kubeflow" / "platform.yaml").read_text())
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


def render_access(mode: str, tmp_path: Path, settings: str | None = None) -> list[dict]:
    """``manifests/pipeline-access/<mode>`` rendered with the Secrets' env files a user writes
    (here: placeholder values in a copy; the real files are never committed) and, if given,
    ``settings`` as the admin's ``settings.properties``."""
    copy = tmp_path / "pipeline-access"
    shutil.copytree(MANIFESTS / "pipeline-access", copy, dirs_exist_ok=True)
    if settings is not None:
        (copy / "base" / "settings.properties").write_text(settings)
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
    from kadet.kubeflow.compile import DEFAULT_OUTPUT
    from kadet.kubeflow.remote import DEFAULT_SERVICE_ACCOUNT

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
    # was: get, watch, patch on every pod of the namespace; KFP's driver only reads its own pod, and
    # Argo >= 3.4's executor reports through workflowtaskresults, not by patching its pod
    assert [r["verbs"] for r in role["rules"] if r["resources"] == ["pods"]] == [["get"]]
    secrets = [n for r in role["rules"] if r["resources"] == ["secrets"] for n in r["resourceNames"]]
    assert sorted(secrets) == ["kadet-minio", "kadet-mlflow-client", "mlpipeline-minio-artifact"]


def test_the_artifact_secret_the_runner_reads_is_a_setting(tmp_path):
    """Was: ``mlpipeline-minio-artifact`` written into the Role; a KFP whose kfp-launcher ConfigMap
    names another Secret (its providers' secretRef) left the launcher without access. Now it is
    ``artifact-secret`` in pipeline-access/base/settings.properties."""
    text = (MANIFESTS / "pipeline-access" / "base" / "settings.properties").read_text()
    docs = render_access("profile", tmp_path, text.replace("=mlpipeline-minio-artifact", "=team-a-s3-creds"))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    secrets = {n for r in role["rules"] if r["resources"] == ["secrets"] for n in r["resourceNames"]}
    assert secrets == {"kadet-minio", "kadet-mlflow-client", "team-a-s3-creds"}


@pytest.mark.parametrize("mode", sorted(ACCESS))
def test_the_prune_cronjob_applies_kadet_prune_where_the_runs_work(mode, tmp_path):
    """The cluster's retention: a nightly CronJob in each install mode's namespace that runs
    ``kadet prune`` (the same rules as on a laptop, kadet/tools/prune.py) on the pipeline's work
    dir (the PVC at the pipeline's ``work_dir``) and the MLflow registry of every corpus
    (``--all-models``), as the pipeline's MLflow user; validated strictly, bounded, non-root, no
    token, admitted to MLflow by the NetworkPolicies, its command one ``kadet`` parses."""
    from kadet.cli import build_parser
    from kadet.kubeflow.compile import DEFAULT_OUTPUT
    from kadet.kubeflow.parameters import PARAMETERS
    from kadet.kubeflow.platform import Platform
    from kadet.kubeflow.remote import package_images

    docs = render_access(mode, tmp_path)                       # kubernetes-validate --strict on every object
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    assert problems([cron]) == [] and cron["metadata"]["namespace"] == ACCESS[mode]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["timeZone"] == "Etc/UTC"
    pod, (c,) = containers(cron)
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    assert c["image"] == package_images(DEFAULT_OUTPUT)["exec-prepare"]
    platform = Platform.load()
    work_dir = next(p.default for p in PARAMETERS if p.name == "work_dir")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims[mounts[work_dir]] == platform.cache_pvc and work_dir == platform.cache_mount
    settings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}["kadet-pipeline-settings"]
    env = {e["name"]: e for e in c["env"]}
    keep = env["KEEP_RUNS"]["valueFrom"]["configMapKeyRef"]
    argv = [a.replace("$(KEEP_RUNS)", settings["data"][keep["key"]]) for a in c["command"]]
    assert argv[0] == "kadet" and keep["name"] == "kadet-pipeline-settings"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "prune" and args.all_models and args.work_dir == work_dir
    assert getattr(args, "retention.keep_runs") == 3
    assert env["MLFLOW_TRACKING_URI"]["value"] == platform.env["MLFLOW_TRACKING_URI"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {"kadet-mlflow-client"} and ("Secret", "kadet-mlflow-client") in {(d["kind"], d["metadata"]["name"])
                                                                                     for d in docs}
    labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    services = [d for d in yaml.safe_load_all(render("base")) if d]
    assert endpoint_problem(platform.env["MLFLOW_TRACKING_URI"], labels, services) is None


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

    from tests.doubles.mlflowserver import mlflow_server

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


def test_every_overlay_patch_matches_a_resource():
    """kustomize applies a patch whose target matches nothing silently. Was: the dev overlay
    resized ``kadet-model-cache``, which lives in pipeline-access/, not in the services."""
    for target in ("overlays/dev", "overlays/prod"):
        kust = yaml.safe_load((MANIFESTS / target / "kustomization.yaml").read_text())
        docs = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(render(target)) if d}
        for patch in kust.get("patches", []):
            t = patch["target"]
            assert (t["kind"], t["name"]) in docs, (target, t)


#: Labels of the namespaces pipeline pods run in: standalone KFP, and a multi-user profile.
POD_NAMESPACES = ({"kubernetes.io/metadata.name": "kubeflow"},
                  {"kubernetes.io/metadata.name": "team-a", "app.kubernetes.io/part-of": "kubeflow-profile"})


def _admits(policy: dict, pod_labels: dict, ns_labels: dict, port: int) -> bool:
    """Does an ingress rule of ``policy`` admit a pod with these labels, from a namespace with
    these labels, on ``port``?"""
    def subset(sel, labels):
        return all(labels.get(k) == v for k, v in (sel or {}).get("matchLabels", {}).items())

    for rule in policy["spec"].get("ingress", []):
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        for src in rule.get("from", []):
            if "namespaceSelector" in src and subset(src["namespaceSelector"], ns_labels) and \
                    subset(src.get("podSelector"), pod_labels):
                return True
    return False


def endpoint_problem(url: str, pod_labels: dict, docs: list[dict]) -> str | None:
    """Why a pipeline pod with ``pod_labels`` cannot reach ``url`` through the rendered services
    ``docs`` (no such Service, port, workload, or no NetworkPolicy admitting it), or None."""
    from urllib.parse import urlparse

    u = urlparse(url)
    m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", u.hostname or "")
    if not m:
        return f"{url}: not a Service's cluster DNS name (it must resolve from the pods' namespace)"
    name, ns = m.groups()
    svc = next((d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name
                and d["metadata"].get("namespace") == ns), None)
    sport = next((p for p in (svc or {}).get("spec", {}).get("ports", []) if p["port"] == u.port), None)
    if sport is None:
        return f"{url}: no Service {name} with port {u.port} in namespace {ns}"
    sel = svc["spec"]["selector"]
    pod = next((containers(d) for d in docs if d["kind"] in ("Deployment", "StatefulSet") and
                sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()), None)
    if pod is None:
        return f"{url}: no workload behind Service {name}"
    target = sport["targetPort"]
    cport = target if isinstance(target, int) else next(
        p["containerPort"] for c in pod[1] for p in c.get("ports", []) if p.get("name") == target)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"].get("namespace") == ns
                and d["spec"]["podSelector"].get("matchLabels", {}).items() <= sel.items()]
    for ns_labels in POD_NAMESPACES:
        if not any(_admits(p, pod_labels, ns_labels, cport) for p in policies):
            return f"{url}: no NetworkPolicy admits {pod_labels} from namespace {ns_labels}"
    return None


def model_problem(value: str, mounts: list[str], image_packages: set[str]) -> str | None:
    """Why a step's pod cannot load the model ``value``: a packaged name whose package the image
    does not install, a path off the volumes the step mounts, an s3:// URI outside bucket kadet."""
    from kadet.kit.models import PACKAGED_DISTRIBUTIONS, model_source

    if value in PACKAGED_DISTRIBUTIONS:
        model_source(value)  # the name is one kadet resolves (here, from the same packages)
        dist = PACKAGED_DISTRIBUTIONS[value]
        return None if dist in image_packages else f"{value}: package {dist} is not installed in the image"
    if value.startswith("s3://"):
        return None if value.startswith("s3://kadet/") else f"{value}: the pipeline's MinIO user reads bucket kadet only"
    if any(value.startswith(m.rstrip("/") + "/") for m in mounts):
        return None  # on the model-cache volume, where `kadet models stage` / `kadet models job` put it
    return f"{value}: neither packaged in the image, nor on a volume the step mounts ({mounts}), nor in s3://kadet"


def image_packages() -> set[str]:
    """The distributions images/Dockerfile installs: every requirements file it pip-installs."""
    text = (REPO / "images" / "Dockerfile").read_text()
    files = re.findall(r"pip install (?:--no-deps )?-r (images/\S+)", text)
    copied = {f for line in re.findall(r"^COPY (.+)$", text, re.M) for f in line.split()[:-1]}
    assert files and set(files) <= copied, (files, copied)
    return {ln.split("==")[0] for f in files for ln in (REPO / f).read_text().splitlines()
            if ln and not ln.startswith("#")}


def test_every_step_of_the_default_pipeline_finds_its_models_and_endpoints(tmp_path, monkeypatch):
    """Compile the pipeline as a cluster gets it; for every step, build the config its pod builds
    from the pipeline's defaults (profile gpu, no config_yaml, only a corpus in bucket kadet) in
    the environment the platform gives the pod, and resolve each model and endpoint the step will
    use (kadet.kit.models.step_needs) against what the image installs (images/Dockerfile) and the
    manifests serve (Service, port, workload, NetworkPolicy from both install modes). Was: the
    packaged models were in no image (ModuleNotFoundError on the first model), and generate sent
    the gpu profile's requests to TGI at http://127.0.0.1:8080, inside its own pod."""
    from kadet.kit.models import step_needs
    from kadet.kubeflow.compile import compile_pipeline
    from kadet.kubeflow.steps import config_step, step_config

    spec, k8s = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text())
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    docs = [d for d in yaml.safe_load_all(render("base")) if d]
    packages, problems, seen = image_packages(), [], set()
    platform = k8s["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, ex in spec["deploymentSpec"]["executors"].items():
        step = re.sub(r"-\d+$", "", name.removeprefix("exec-")).replace("-", "_")
        env = {e["name"]: e["value"] for e in ex["container"].get("env", [])}
        for var in ("KADET_TGI_URL", "MLFLOW_TRACKING_URI", "KADET_S3_ENDPOINT"):
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        cfg = step_config(config_step({**defaults, "data_uri": "s3://kadet/corpora/mycorpus"}))
        mounts = [m["mountPath"] for m in platform[name].get("pvcMount", [])]
        labels = platform[name].get("podMetadata", {}).get("labels", {})
        for need in step_needs(cfg, step, env):
            seen.add((step, need.kind, need.value))
            problem = (model_problem(need.value, mounts, packages) if need.kind == "model"
                       else endpoint_problem(need.value, labels, docs))
            if problem:
                problems.append(f"{step} ({need.setting}): {problem}")
    assert problems == []
    assert {("generate", "endpoint", "http://tgi.kadet.svc.cluster.local:8080"),
            ("label", "model", "smollm2"), ("distill", "model", "all-MiniLM-L6-v2"),
            ("preflight", "model", "all-MiniLM-L6-v2"), ("preflight", "model", "smollm2"),
            ("register", "endpoint", "http://mlflow.kadet.svc.cluster.local:5000"),
            ("prepare", "endpoint", "http://minio.kadet.svc.cluster.local:9000"),
            ("fingerprint", "endpoint", "http://minio.kadet.svc.cluster.local:9000")} <= seen


def test_the_checks_catch_what_a_cluster_would_not_provide():
    docs = [d for d in yaml.safe_load_all(render("base")) if d]
    pipeline = {"kadet.io/role": "pipeline"}
    assert "not a Service" in endpoint_problem("http://127.0.0.1:8080", pipeline, docs)
    assert "no Service tgi with port 80" in endpoint_problem("http://tgi.kadet.svc.cluster.local:80", pipeline, docs)
    assert "no NetworkPolicy admits" in endpoint_problem("http://tgi.kadet.svc.cluster.local:8080", {}, docs)
    assert "no NetworkPolicy admits" in endpoint_problem("http://postgres.kadet.svc.cluster.local:5432", pipeline, docs)
    assert "is not installed" in model_problem("all-MiniLM-L6-v2", [], {"kfp"})
    assert "neither packaged" in model_problem("/models/bge", ["/var/cache/kadet"], set())
    assert model_problem("/var/cache/kadet/models/bge", ["/var/cache/kadet"], set()) is None
    assert "bucket kadet only" in model_problem("s3://mlflow-artifacts/m", [], set())


def test_the_staging_job_runs_where_pipeline_pods_run_with_their_access(tmp_path, capsys):
    """``kadet models job SRC DEST``: the Job that puts a model from the bucket onto the model-cache
    volume, in each install mode's namespace, validates strictly, passes the house checks and gets
    what a pipeline pod gets (the PVC, the MinIO Secret, the endpoints, the label MinIO admits)."""
    from kadet.cli import main
    from kadet.kubeflow.compile import DEFAULT_OUTPUT
    from kadet.kubeflow.platform import Platform
    from kadet.kubeflow.remote import package_images

    platform = Platform.load()
    docs = [d for d in yaml.safe_load_all(render("base")) if d]
    for ns in ACCESS.values():
        assert main(["models", "job", "s3://kadet/models/bge-reranker", "/var/cache/kadet/models/bge-reranker",
                     "--namespace", ns]) == 0
        job = yaml.safe_load(capsys.readouterr().out)
        path = tmp_path / f"{ns}.yaml"
        path.write_text(yaml.safe_dump(job))
        check = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", K8S_VERSION,
                                "--quiet", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        assert problems([job]) == [] and job["metadata"]["namespace"] == ns
        pod, (c,) = containers(job)
        assert c["command"] == ["kadet", "models", "stage", "s3://kadet/models/bge-reranker",
                                "/var/cache/kadet/models/bge-reranker"]
        assert c["image"] == package_images(DEFAULT_OUTPUT)["exec-prepare"]
        assert {"name": "cache", "persistentVolumeClaim": {"claimName": platform.cache_pvc}} in pod["volumes"]
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
        assert "kadet-minio" in refs
        env = {e["name"]: e.get("value") for e in c["env"]}
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert endpoint_problem(env["KADET_S3_ENDPOINT"], labels, docs) is None
    for bad, message in ((["/tmp/x", "/var/cache/kadet/models/x"], "stage the model into s3://"),
                         (["s3://kadet/models/x", "/models/x"], "give a path under /var/cache/kadet/")):
        assert main(["models", "job", *bad]) == 2
        assert message in capsys.readouterr().err


#: Guide commands that need the cluster (or install software): the guide test knows them and
#: does not run them; any other command in the guide's steps must run here.
CLUSTER_ONLY = ("kubectl create namespace ", "kubectl -n ", "kubectl label ", "IMG=$(kubectl ",
                "bash scripts/bootstrap.sh", "$EDITOR ", "export KFP_TOKEN=", "export AWS_SECRET_ACCESS_KEY=")


def guide_commands(text: str) -> list[str]:
    """The commands of the guide's ``## Install, step by step`` section (bash blocks, one per line,
    a trailing ``  # comment`` dropped)."""
    section = text.split("## Install, step by step", 1)[1].split("\n## ", 1)[0]
    lines = [ln for block in re.findall(r"```bash\n(.*?)```", section, re.S) for ln in block.splitlines()]
    return [re.sub(r"\s{2,}#.*$", "", ln).strip() for ln in lines if ln.strip()]


def run_guide_command(cmd: str, cwd: Path, env: dict, forced: dict) -> str:
    """Run one guide command here the way it can run without a cluster; returns what ran."""
    import shlex

    if cmd.startswith(CLUSTER_ONLY):
        key = cmd.removeprefix("export ").split("=")[0] if cmd.startswith("export ") else ""
        if key in forced:  # what the cluster would answer (here: the test's S3 server's secret)
            env[key] = forced[key]
        return "cluster"
    if cmd.startswith("export ") and "$(" not in cmd:
        for item in shlex.split(cmd)[1:]:
            key, _, value = item.partition("=")
            env[key] = forced.get(key, value)
        return "export"
    if cmd.startswith("kubectl apply -k "):
        cmd = "kubectl kustomize " + cmd.split()[-1]
    elif cmd.endswith("| kubectl create -f -"):
        validate = f"{Path(sys.executable).parent / 'kubernetes-validate'} --strict -k {K8S_VERSION} --quiet -"
        cmd = cmd.removesuffix("| kubectl create -f -") + f"> job.yaml && {validate} < job.yaml"
    elif not cmd.startswith(("make -C images ", "cp ", "mkdir ", "printf ", ".venv/bin/")):
        raise AssertionError(f"a guide command neither run here nor known as cluster-only: {cmd}")
    tools = {"kadet": f"{sys.executable} -m kadet.cli", "python": sys.executable}
    cmd = re.sub(r"(?<![\w/])\.venv/bin/(kadet|python)\b", lambda m: tools[m.group(1)], cmd)
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc.stdout


def test_the_install_guide_runs_here(tmp_path):
    """Every command of manifests/README.md's install steps, in order, as written, on a copy of
    the repository: those that need a cluster are only checked against :data:`CLUSTER_ONLY`; the
    rest run, with made-up values where the guide has the admin's (the registry is made up, the
    digests come from a stand-in, ``docker`` records; MinIO is a real S3 server, KFP the API
    double): ``make -C images build push pin compile``, each ``kubectl apply -k`` as ``kubectl
    kustomize``, the env files, the multi-user overlay, the corpus upload, ``kadet models stage``,
    ``kadet models job`` through ``kubernetes-validate --strict``, ``kadet submit`` / ``schedule``."""
    import os
    import shutil

    from kadet.kit.models import resolve_model_path
    from tests.doubles.kfpdouble import kfp_double
    from tests.doubles.s3server import rclone_s3, s3_env
    from tests.deploy.test_images import registry_tools, repo_copy

    copy = repo_copy(tmp_path)
    (copy / "mycorpus").mkdir()
    (copy / "mycorpus" / "corpus.jsonl").write_text('{"_id": "1", "title": "t", "text": "a passage"}\n')
    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), copy / "bge-reranker-v2-m3")  # a real model folder
    commands = guide_commands((MANIFESTS / "README.md").read_text())
    with rclone_s3(tmp_path / "s3") as endpoint, kfp_double() as (host, double):
        forced = {**s3_env(endpoint), "KFP": host}
        env = {**os.environ, **registry_tools(tmp_path), "PYTHON": sys.executable, "KADET_S3_CACHE": str(tmp_path / "c")}
        ran = [(cmd, run_guide_command(cmd, copy, env, forced)) for cmd in commands]
    assert any(c.startswith("make -C images build push pin compile") for c, _ in ran)
    profile = [d for d in yaml.safe_load_all(next(out for c, out in ran if "pipeline-access-$PROFILE" in c
                                                  and c.startswith("kubectl")))]
    assert {d["metadata"].get("namespace") for d in profile if d["kind"] != "Namespace"} == {"team-a"}
    (cron,) = [d for d in profile if d["kind"] == "CronJob"]                 # make pin pinned the prune's image
    assert containers(cron)[1][0]["image"].startswith("registry.example.com/kadet/kadet@sha256:")
    assert (tmp_path / "s3" / "kadet" / "corpora" / "mycorpus" / "corpus.jsonl").is_file()
    assert (tmp_path / "s3" / "kadet" / "models" / "bge-reranker-v2-m3" / "config.json").is_file()
    runs = [r["body"] for r in double.requests if r["method"] == "POST" and r["path"] == "/apis/v2beta1/runs"]
    assert len(runs) == 3 and len(double.recurring) == 2
    assert "cross-encoder:/var/cache/kadet/models/bge-reranker-v2-m3" in runs[1]["runtime_config"]["parameters"]["config_yaml"]
    assert {p["namespace"] for p in double.pipelines.values()} == {"", "team-a"}
    assert all("registry.example.com/kadet/kadet@sha256:" in r["body"]["upload"] for r in double.requests
               if r["path"].startswith("/apis/v2beta1/pipelines/upload"))
