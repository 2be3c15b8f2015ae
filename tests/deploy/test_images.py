"""The image definitions, checked offline (no Docker engine runs here; the images are not built
in CI): pins in step with pyproject.toml, the packaged default models, non-root, multi-stage, pinned
bases; and the registry flow (make -C images build push pin compile) for a made-up registry."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from tests.conftest import REPO

IMAGES = REPO / "images"


def test_image_requirements_are_pyproject_minus_torch_and_models():
    """requirements.txt = pyproject's dependencies minus torch and the model packages; the model
    packages (images/models.txt, installed --no-deps) are exactly the distributions of kadet's
    packaged model names, at the pins pyproject.toml and scripts/bootstrap.sh install here."""
    from kadet.kit.models import PACKAGED_DISTRIBUTIONS

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    models = _pins(IMAGES / "models.txt")
    assert {m.split("==")[0] for m in models} == set(PACKAGED_DISTRIBUTIONS.values())
    expected = [d for d in deps if not d.startswith("torch==") and d not in models]
    assert _pins(IMAGES / "requirements.txt") == expected
    bootstrap = (REPO / "scripts" / "bootstrap.sh").read_text()
    for pin in models:
        assert pin in deps or f'"{pin}"' in bootstrap, pin


def _pins(path) -> list[str]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", ln) for ln in lines), lines
    return lines


def test_dockerfiles_are_multi_stage_non_root_and_pinned():
    for name in ("Dockerfile", "Dockerfile.mlflow"):
        text = (IMAGES / name).read_text()
        stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
        assert len(stages) >= 2, name
        assert re.search(r"^USER 10001", text, re.M), name
        base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
        for install in re.findall(r"pip install ([^\n;&]+)", text):
            # a quoted "$VAR" is an option's value (--find-links "$TORCH_FIND_LINKS"), not a package
            for spec in re.findall(r'"([^"]+)"', re.sub(r'--(?:find-links|index-url) "[^"]*"', "", install)):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", spec), f"{name}: unpinned {spec}"
    kadet = (IMAGES / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --no-deps /src" in kadet and "pip install --no-deps -r images/models.txt" in kadet
    # kadet's own code is a small layer after the dependencies: a code change does not rebuild them
    assert kadet.index("COPY --from=build /opt/kadet /opt/kadet") < kadet.index("COPY kadet/ /src/kadet/")
    assert re.search(r"^COPY images/requirements.txt images/models.txt images/$", kadet, re.M)
    assert 'VARIANT" = "cpu"' in kadet and 'VARIANT" = "cuda"' in kadet


def test_the_tgi_image_runs_as_the_user_the_deployment_asks_for():
    """Was: the Deployment ran upstream TGI 3.3.6 as user 1000, which cannot read its own
    install under /root (TGI >= 3.1). Now a thin layer opens /root read-only, adds user 10001,
    points HOME and the caches at /tmp; the Deployment runs that image as that user."""
    import yaml

    text = (IMAGES / "Dockerfile.tgi").read_text()
    base = re.search(r"^ARG TGI_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"ghcr\.io/huggingface/text-generation-inference:3\.(\d+)\.\d+", base)
    assert int(re.search(r":3\.(\d+)", base).group(1)) >= 1
    run = " ".join(re.findall(r"^RUN (.+(?:\n .+)*)", text, re.M))
    assert "chmod 0755 /root" in run and "a+rX /root" in run
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user == "10001:10001" and "HOME=/tmp" in text
    deployment = next(d for d in yaml.safe_load_all((REPO / "manifests" / "base" / "tgi.yaml").read_text())
                      if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsGroup"] == 10001
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/kadet-ml/tgi:" + base.rsplit(":", 1)[1]
    assert c["securityContext"]["readOnlyRootFilesystem"] and {"mountPath": "/tmp", "name": "tmp"} in c["volumeMounts"]
    make = (IMAGES / "Makefile").read_text()
    assert "image-tgi" in make and "$(REGISTRY)/tgi:$(TGI_VERSION)" in make


#: A made-up registry (with a port, which a tag's colon must not be mistaken for).
REGISTRY = "registry.example.test:5000/team/kadet"


def repo_copy(tmp_path):
    """What ``make -C images`` reads and writes, copied (the pin rewrites manifests/base)."""
    import shutil

    copy = tmp_path / "repo"
    for part in ("images", "manifests", "kadet"):
        shutil.copytree(REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "*.env"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    return copy


def fake_digest(ref: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def registry_tools(tmp_path) -> dict[str, str]:
    """Stand-ins for what cannot run here: ``docker`` (records its arguments; no engine runs here)
    and the registry's digest lookup (``RESOLVE``: sha256 of the reference, as :func:`fake_digest`)."""
    docker, resolve = tmp_path / "docker", tmp_path / "resolve"
    docker.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "docker.log"}\n')
    resolve.write_text("#!/bin/sh\nprintf 'sha256:%s\\n' \"$(printf %s \"$1\" | sha256sum | cut -d' ' -f1)\"\n")
    for f in (docker, resolve):
        f.chmod(0o755)
    return {"DOCKER": str(docker), "RESOLVE": str(resolve)}


def make_images(copy, targets: list[str], env: dict) -> subprocess.CompletedProcess:
    import os
    import sys

    return subprocess.run(["make", "-s", "-C", str(copy / "images"), *targets, f"PYTHON={sys.executable}"],
                          env={**os.environ, **env}, capture_output=True, text=True)


def rendered_images(target) -> list[str]:
    import yaml

    from images.pin import _images

    out = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True, check=True).stdout
    return [i for d in yaml.safe_load_all(out) if d for i in _images(d)]


def test_one_registry_flow_pins_every_image_to_that_registry(tmp_path, capsys):
    """``REGISTRY=... make -C images build push pin compile`` on a copy of the repository, with a
    made-up registry, a recording ``docker`` and a stand-in digest source (no engine or registry
    here): every image of base and both overlays (MinIO and its buckets Job, Postgres, MLflow,
    TGI) renders as ``REGISTRY/<name>@sha256:...``, each one of them was pushed under that name,
    the pipeline in build/ runs only ``REGISTRY/kadet@sha256:...`` and is what ``kadet submit
    --package build/kadet_pipeline.yaml`` uploads; the committed pipeline YAML is untouched.
    Was: no ``build`` target, ``pin`` without REGISTRY pinned ghcr.io/kadet-ml, the MLflow and
    TGI images stayed at ghcr.io, MinIO and Postgres at their upstream registries."""
    from kadet.cli import main
    from tests.doubles.kfpdouble import kfp_double

    copy = repo_copy(tmp_path)
    tools = registry_tools(tmp_path)
    refused = make_images(copy, ["pin"], tools)
    assert refused.returncode != 0 and "set REGISTRY" in refused.stderr
    proc = make_images(copy, ["build", "push", "pin", "compile"], {"REGISTRY": REGISTRY, **tools})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "docker.log").read_text().splitlines()
    pushed = {line.split()[1] for line in log if line.startswith("push ")}
    built = {line.split("-t ")[1].split()[0] for line in log if line.startswith("build ")}
    tagged = {line.split()[2] for line in log if line.startswith("tag ")}
    assert pushed == built | tagged and len(pushed) == 6, log     # MinIO: the server and the buckets Job
    assert {p.rsplit("/", 1)[1].split(":")[0] for p in pushed} == {"kadet", "mlflow-server", "tgi", "minio", "postgres"}
    for target in ("base", "overlays/dev", "overlays/prod"):
        images = rendered_images(copy / "manifests" / target)
        assert images and all(i.startswith(REGISTRY + "/") for i in images), (target, images)
        for image in images:
            name, digest = image.split("@")
            (tag,) = [p for p in pushed if p.rsplit(":", 1)[0] == name]    # the pushed tag of that name
            assert digest == fake_digest(tag), image
    package = copy / "build" / "kadet_pipeline.yaml"
    from kadet.kubeflow.remote import package_images

    assert set(package_images(package).values()) == {
        f"{REGISTRY}/kadet@{fake_digest(f'{REGISTRY}/kadet:0.1.0-cpu')}",
        f"{REGISTRY}/kadet@{fake_digest(f'{REGISTRY}/kadet:0.1.0-cuda')}"}
    committed = Path("kadet") / "kubeflow" / "kadet_pipeline.yaml"
    assert (copy / committed).read_text() == (REPO / committed).read_text()
    with kfp_double() as (host, double):
        assert main(["submit", "--host", host, "--data", "s3://kadet/corpora/x", "--package", str(package)]) == 0
    (upload,) = [r for r in double.requests if r["path"].startswith("/apis/v2beta1/pipelines/upload_version")]
    assert f"{REGISTRY}/kadet@sha256:" in upload["body"]["upload"] and "ghcr.io" not in upload["body"]["upload"]
    assert f"{REGISTRY}/kadet@sha256:" in capsys.readouterr().out
