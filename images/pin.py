"""Pin every image kadet deploys to its digest: ``make -C images pin`` after ``make push``.

Tags move; a digest names exactly the bytes that were tested. This resolves each image of the
services' manifests (``manifests/base``) and kadet's own pipeline images to ``sha256:...``
digests in the registry, then

- writes an ``images:`` list into ``manifests/base/kustomization.yaml`` (kustomize replaces each
  ``name:tag`` with ``name@sha256:...`` when it renders, so ``kubectl apply -k`` deploys digests);
- compiles the pipeline against ``kadet@sha256:...`` (CPU and CUDA) into ``build/kadet_pipeline.yaml``.

Resolution needs the registry (``docker buildx imagetools inspect`` or ``crane digest``); the
rewriting does not, and is what ``tests/test_images.py`` checks.

    python images/pin.py --kadet-image ghcr.io/kadet-ml/kadet:0.1.0-cpu --gpu-image ghcr.io/kadet-ml/kadet:0.1.0-cuda
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "manifests" / "base"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def split_ref(ref: str) -> tuple[str, str]:
    """``registry/repo:tag`` -> (``registry/repo``, ``tag``); a port's colon is not a tag's."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return ref, "latest"
    return name, tag


def manifest_images(base: Path = BASE) -> list[str]:
    """Every ``image:`` of the base's resources, in order, once each."""
    kust = yaml.safe_load((base / "kustomization.yaml").read_text())
    seen: list[str] = []
    for res in kust.get("resources", []):
        for doc in yaml.safe_load_all((base / res).read_text()):
            for image in _images(doc):
                if image not in seen:
                    seen.append(image)
    return seen


def _images(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "image" and isinstance(v, str):
                yield v.split("#")[0].strip()
            else:
                yield from _images(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _images(v)


def resolve_with_registry(ref: str) -> str:
    """The digest of ``ref`` in its registry (``crane`` if installed, else ``docker buildx``)."""
    if shutil.which("crane"):
        cmd = ["crane", "digest", ref]
    else:
        cmd = ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{.Manifest.Digest}}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    if not DIGEST.fullmatch(out):
        raise SystemExit(f"{' '.join(cmd)}: not a digest: {out!r}")
    return out


def pin_kustomization(base: Path, digests: dict[str, str]) -> None:
    """Write ``images:`` (name, digest) for every ``ref -> digest`` into ``base/kustomization.yaml``."""
    path = base / "kustomization.yaml"
    kust = yaml.safe_load(path.read_text())
    entries = []
    for ref, digest in digests.items():
        if not DIGEST.fullmatch(digest):
            raise ValueError(f"{ref}: {digest!r} is not a sha256 digest")
        name, tag = split_ref(ref)
        entries.append({"name": name, "digest": digest})
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"two tags of one image in the manifests: {names}")
    kust["images"] = entries
    header = "# images: pinned by images/pin.py (make -C images pin); rerun it after pushing new tags\n"
    path.write_text(header + yaml.safe_dump(kust, sort_keys=False))


def pin(resolve: Callable[[str], str], kadet_image: str, gpu_image: str, base: Path = BASE,
        output: Path = ROOT / "build" / "kadet_pipeline.yaml") -> dict[str, str]:
    digests = {ref: resolve(ref) for ref in manifest_images(base)}
    pin_kustomization(base, digests)
    from pipelines.compile import compile_pipeline

    def at(ref: str) -> str:
        return f"{split_ref(ref)[0]}@{resolve(ref)}"

    compile_pipeline(output, base_image=at(kadet_image), gpu_image=at(gpu_image))
    return digests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kadet-image", required=True)
    ap.add_argument("--gpu-image", required=True)
    ap.add_argument("--output", default=str(ROOT / "build" / "kadet_pipeline.yaml"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    for ref, digest in pin(resolve_with_registry, args.kadet_image, args.gpu_image, output=Path(args.output)).items():
        print(f"{ref} -> {digest}")
    print(f"wrote {BASE / 'kustomization.yaml'} and {args.output}")


if __name__ == "__main__":
    main()
