"""Compile the kadet pipeline to KFP IR YAML.

    python -m kadet.kubeflow.compile [--output kadet/kubeflow/kadet_pipeline.yaml] [--check]
    python -m kadet.kubeflow.compile --image REG/kadet@sha256:... --gpu-image REG/kadet@sha256:...   # -> build/

``--check`` compiles to a temporary file and exits 1 (with a diff summary) if the committed
YAML differs: CI runs it through ``tests/unit/kubeflow/test_pipeline.py``. The committed YAML is compiled
with the default images and stays that reference: with ``--image``/``--gpu-image`` (your
registry's, e.g. ``make -C images compile``) the output goes to ``build/kadet_pipeline.yaml``.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).with_name("kadet_pipeline.yaml")
#: Where a pipeline compiled against other images goes (git-ignored): the package to submit.
BUILD_OUTPUT = Path(__file__).resolve().parents[2] / "build" / "kadet_pipeline.yaml"


def compile_pipeline(output: str | Path, base_image: str | None = None, platform: str | Path | None = None,
                     gpu_image: str | None = None) -> Path:
    """Compile with the Kubernetes settings of ``platform`` (default ``kadet/kubeflow/platform.yaml``)."""
    from kfp import compiler

    from kadet.kubeflow.pipeline import make_pipeline
    from kadet.kubeflow.platform import DEFAULT_PLATFORM, Platform

    pipeline = make_pipeline(base_image, Platform.load(platform or DEFAULT_PLATFORM), gpu_image)
    compiler.Compiler().compile(pipeline, str(output))
    return Path(output)


def _spec_lines(text: str) -> list[str]:
    # KFP's leading comment block lists dict defaults in set order (it varies between runs);
    # the IR itself is deterministic
    return [line for line in text.splitlines() if not line.startswith("#")]


def stale_diff(committed: str | Path = DEFAULT_OUTPUT, base_image: str | None = None,
               gpu_image: str | None = None) -> list[str]:
    """Unified diff between the committed YAML and a fresh compile, comment header aside
    (empty when up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _spec_lines(compile_pipeline(Path(tmp) / "p.yaml", base_image, gpu_image=gpu_image).read_text())
    old = _spec_lines(Path(committed).read_text()) if Path(committed).exists() else []
    return list(difflib.unified_diff(old, fresh, str(committed), "fresh compile", lineterm=""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", help=f"default {DEFAULT_OUTPUT.name} beside this file; with --image/--gpu-image "
                                      "build/kadet_pipeline.yaml")
    ap.add_argument("--image", help="component image (default $KADET_IMAGE or components.DEFAULT_IMAGE)")
    ap.add_argument("--gpu-image", help="image of the GPU steps (default $KADET_GPU_IMAGE or components.DEFAULT_GPU_IMAGE)")
    ap.add_argument("--check", action="store_true", help="fail if --output is not what a compile gives")
    args = ap.parse_args(argv)
    custom = bool(args.image or args.gpu_image)
    args.output = args.output or str(BUILD_OUTPUT if custom and not args.check else DEFAULT_OUTPUT)
    if custom and not args.check and Path(args.output).resolve() == DEFAULT_OUTPUT.resolve():
        print(f"{args.output} is the committed reference (default images; compile --check compares it): write "
              f"your images' pipeline elsewhere, e.g. {BUILD_OUTPUT}", file=sys.stderr)
        return 2
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if args.check:
        diff = stale_diff(args.output, args.image, args.gpu_image)
        if diff:
            print("\n".join(diff[:60]))
            print(f"\n{args.output} is stale: run `python -m kadet.kubeflow.compile`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    print(f"wrote {compile_pipeline(args.output, args.image, gpu_image=args.gpu_image)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
