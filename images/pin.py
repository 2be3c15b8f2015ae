"""Every image kadet deploys, in your registry, pinned to its digest: ``make -C images pin compile``.

    REGISTRY=registry.example.com/kadet make -C images build push pin compile

Tags move; a digest names exactly the bytes that were pushed. One registry holds everything:
kadet's images (CPU, CUDA), the MLflow server and the TGI layer (built by ``make build``) and
copies of the upstream images the manifests run (MinIO for the server and the buckets Job,
Postgres; pulled and re-tagged by ``make build``). Subcommands:

- ``targets``: one line per image, ``SOURCE TARGET build|mirror`` (``make`` builds, mirrors and
  pushes exactly these);
- ``pin``: resolves each target's digest in the registry and writes kustomize ``images:``
  (``name`` -> ``newName`` in the registry + ``digest``) into ``manifests/base/kustomization.yaml``
  (and the CPU image's into ``manifests/pipeline-access/base/kustomization.yaml``: the prune CronJob)
  (so every ``kubectl apply -k`` deploys ``REGISTRY/...@sha256:...``) and the lock file
  ``build/images.json``;
- ``compile``: compiles the pipeline against the lock's ``kadet@sha256:...`` (CPU and CUDA) into
  ``build/kadet_pipeline.yaml``, the package to submit. The committed
  ``kadet/kubeflow/kadet_pipeline.yaml`` is not touched (it stays ``compile --check``'s reference).

Resolution asks the registry (``--resolver CMD``: ``CMD REF`` prints the digest; default
``crane digest``, else ``docker buildx imagetools inspect``); the rewriting needs no registry and
is what ``tests/deploy/test_images.py`` runs, with a made-up registry and a stand-in resolver.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "manifests" / "base"
LOCK = ROOT / "build" / "images.json"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: The images ``make build`` builds (images/Makefile), by repository name; the rest are mirrored.
BUILT = ("kadet", "mlflow-server", "tgi")


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


def targets(registry: str, version: str, base: Path = BASE) -> list[tuple[str, str, str]]:
    """``(source, target, build|mirror)`` for kadet's CPU and CUDA images and every manifest image:
    the target is ``REGISTRY/<repository's last name>:<tag>``."""
    registry = registry.rstrip("/")
    if not registry or "://" in registry:
        raise SystemExit(f"pin: REGISTRY {registry!r}: give it as host[:port]/path, e.g. registry.example.com/kadet")
    out = [(f"kadet:{version}-{v}", f"{registry}/kadet:{version}-{v}", "build") for v in ("cpu", "cuda")]
    for ref in manifest_images(base):
        name, tag = split_ref(ref)
        short = name.rsplit("/", 1)[-1]
        out.append((ref, f"{registry}/{short}:{tag}", "build" if short in BUILT else "mirror"))
    return out


def resolver(command: str | None) -> Callable[[str], str]:
    """``ref -> digest`` through ``command REF`` (or ``crane digest`` / ``docker buildx``)."""
    if command:
        cmd = shlex.split(command)
    elif shutil.which("crane"):
        cmd = ["crane", "digest"]
    else:
        cmd = ["docker", "buildx", "imagetools", "inspect", "--format", "{{.Manifest.Digest}}"]

    def resolve(ref: str) -> str:
        proc = subprocess.run([*cmd, ref], capture_output=True, text=True)
        out = proc.stdout.strip()
        if proc.returncode or not DIGEST.fullmatch(out):
            raise SystemExit(f"pin: {' '.join(cmd)} {ref}: no digest ({(proc.stderr or out).strip()[:200]}); "
                             "was it pushed (make push)?")
        return out
    return resolve


def pin_kustomization(base: Path, entries: list[dict]) -> None:
    """Write ``images:`` (``name`` -> ``newName`` + ``digest``) into ``base/kustomization.yaml``."""
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise SystemExit(f"pin: two tags of one image in the manifests: {names}")
    for e in entries:
        if not DIGEST.fullmatch(e["digest"]):
            raise SystemExit(f"pin: {e['name']}: {e['digest']!r} is not a sha256 digest")
    path = base / "kustomization.yaml"
    kust = yaml.safe_load(path.read_text())
    kust["images"] = entries
    header = "# images: pinned by images/pin.py (make -C images pin); rerun it after pushing new tags\n"
    path.write_text(header + yaml.safe_dump(kust, sort_keys=False))


def pin(resolve: Callable[[str], str], registry: str, version: str, base: Path = BASE, lock: Path = LOCK) -> dict:
    """Resolve every target, pin the manifests, write the lock; returns the lock's content."""
    pinned, entries = {}, []
    for source, target, _ in targets(registry, version, base):
        name = split_ref(target)[0]
        pinned[target] = f"{name}@{resolve(target)}"
        if not source.startswith("kadet:"):
            entries.append({"name": split_ref(source)[0], "newName": name, "digest": pinned[target].split("@")[1]})
    pin_kustomization(base, entries)
    access = base.parent / "pipeline-access" / "base"
    if (access / "prune.yaml").exists():   # the kadet-prune CronJob runs the CPU image
        cpu = pinned[f"{registry.rstrip('/')}/kadet:{version}-cpu"]
        pin_kustomization(access, [{"name": split_ref(manifest_images(access)[0])[0], "newName": cpu.split("@")[0],
                                    "digest": cpu.split("@")[1]}])
    content = {"registry": registry.rstrip("/"), "version": version, "images": pinned,
               "kadet_cpu": pinned[f"{registry.rstrip('/')}/kadet:{version}-cpu"],
               "kadet_cuda": pinned[f"{registry.rstrip('/')}/kadet:{version}-cuda"]}
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps(content, indent=2) + "\n")
    return content


def compile_pinned(registry: str, output: Path, lock: Path = LOCK) -> Path:
    """The pipeline compiled against the lock's kadet digests (``make compile``)."""
    if not lock.exists():
        raise SystemExit(f"pin: {lock}: nothing pinned yet: run make -C images pin first")
    content = json.loads(lock.read_text())
    if content["registry"] != registry.rstrip("/"):
        raise SystemExit(f"pin: {lock} pins {content['registry']}, not {registry}: run make -C images pin again")
    sys.path.insert(0, str(ROOT))
    from kadet.kubeflow.compile import compile_pipeline

    return compile_pipeline(output, base_image=content["kadet_cpu"], gpu_image=content["kadet_cuda"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--version", required=True, help="kadet's version (the kadet image tags VERSION-cpu/-cuda)")
    ap.add_argument("--base", default=str(BASE), help="the services' kustomize base (default manifests/base)")
    ap.add_argument("--lock", default=str(LOCK))
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("targets")
    sub.add_parser("pin").add_argument("--resolver", help="command printing REF's digest (default crane / docker)")
    sub.add_parser("compile").add_argument("--output", default=str(ROOT / "build" / "kadet_pipeline.yaml"))
    args = ap.parse_args(argv)
    if args.action == "targets":
        print("\n".join(" ".join(t) for t in targets(args.registry, args.version, Path(args.base))))
    elif args.action == "pin":
        content = pin(resolver(args.resolver), args.registry, args.version, Path(args.base), Path(args.lock))
        print("\n".join(content["images"].values()))
        print(f"wrote {Path(args.base) / 'kustomization.yaml'} and {args.lock}")
    else:
        print(f"wrote {compile_pinned(args.registry, Path(args.output), Path(args.lock))}")


if __name__ == "__main__":
    main()
