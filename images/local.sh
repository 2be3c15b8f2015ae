#!/usr/bin/env bash
# Build kadet's images on this machine, for real: the component image (cpu) and the MLflow server.
#
#   make -C images local            # or: bash images/local.sh [--no-cache]
#
# The Dockerfiles are what a user with internet builds (official python base, PyTorch's CPU index).
# Where those cannot be reached, the same Dockerfiles are built with a local base and a wheel folder:
#   - the engine: docker if it answers, else podman; neither: podman + runc installed from Debian's
#     packages (as root), with runc and lowered ulimits (crun refuses hybrid cgroups here);
#   - the base: $PYTHON_IMAGE if it can be pulled, else localhost/kadet-python:3.11-bookworm, made once
#     with debootstrap from Debian's packages (python3, python3-venv, ca-certificates);
#   - torch: PyTorch's CPU index if it answers, else the CPU wheel in $KADET_WHEELS (default
#     /opt/wheels), mounted into the build (podman) as a find-links folder.
# It says which it used, then each image's size and build time. Tags: $KADET_IMAGE
# (default localhost/kadet:<version>-cpu) and $KADET_MLFLOW_IMAGE (localhost/kadet-mlflow:3.17.2).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml")"
PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11.14-slim-bookworm}"
LOCAL_BASE="localhost/kadet-python:3.11-bookworm"
TORCH_INDEX="${KADET_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
WHEELS="${KADET_WHEELS:-/opt/wheels}"
IMAGE="${KADET_IMAGE:-localhost/kadet:${VERSION}-cpu}"
MLFLOW_IMAGE="${KADET_MLFLOW_IMAGE:-localhost/kadet-mlflow:3.17.2}"
EXTRA=("$@")

say() { echo "images: $*" >&2; }

engine() {
  if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then echo docker; return; fi
  if ! command -v podman >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { say "neither docker nor podman works, and installing podman needs root"; exit 2; }
    say "installing podman and runc from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
  fi
  if [ ! -s /etc/containers/containers.conf ] && [ "$(id -u)" = 0 ]; then
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n\n[engine]\nruntime = "runc"\n' \
      > /etc/containers/containers.conf
    say "wrote /etc/containers/containers.conf (runc, lowered ulimits)"
  fi
  echo podman
}

ENGINE="$(engine)"
say "engine: $ENGINE ($($ENGINE --version))"

# the base image: the official one if it can be pulled, else a local Debian bookworm base
base_image() {
  if $ENGINE image exists "$PYTHON_IMAGE" 2>/dev/null || timeout 60 $ENGINE pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
    echo "$PYTHON_IMAGE"; return
  fi
  if ! $ENGINE image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { say "$PYTHON_IMAGE cannot be pulled and debootstrap needs root"; exit 2; }
    command -v debootstrap >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    local dir; dir="$(mktemp -d /var/tmp/kadet-rootfs.XXXXXX)"
    say "$PYTHON_IMAGE cannot be pulled: making $LOCAL_BASE with debootstrap (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$dir" >/dev/null
    tar -C "$dir" -c . | $ENGINE import - "$LOCAL_BASE" >/dev/null
    rm -rf "$dir"
  fi
  echo "$LOCAL_BASE"
}

BASE="$(base_image)"
say "base: $BASE"
TORCH_ARGS=()
if timeout 10 python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" \
    "$TORCH_INDEX" 2>/dev/null; then
  say "torch: from $TORCH_INDEX"
  TORCH_ARGS=(--build-arg "TORCH_INDEX=$TORCH_INDEX")
elif [ "$ENGINE" = podman ] && ls "$WHEELS"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  say "torch: $TORCH_INDEX does not answer; the CPU wheel from $WHEELS (mounted into the build)"
  TORCH_ARGS=(-v "$WHEELS:/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels)
else
  say "torch: $TORCH_INDEX does not answer and no torch-2.13.0+cpu wheel in $WHEELS (KADET_WHEELS)"; exit 2
fi
NET=()
if [ "$ENGINE" = podman ]; then
  # RUN steps reach the package registries through the host's network and CA bundle
  NET=(--network host -v /etc/ssl/certs:/etc/ssl/certs:ro)
fi

build() {  # tag, then build arguments
  local tag="$1"; shift
  local t0; t0=$(date +%s)
  $ENGINE build "${NET[@]}" --build-arg "PYTHON_IMAGE=$BASE" -t "$tag" "${EXTRA[@]}" "$@"
  local secs=$(( $(date +%s) - t0 ))
  local bytes; bytes=$($ENGINE image inspect --format '{{.Size}}' "$tag")
  echo "built $tag: $(( bytes / 1000000 )) MB in ${secs} s (base $BASE)"
}

build "$IMAGE" -f "$ROOT/images/Dockerfile" --build-arg VARIANT=cpu "${TORCH_ARGS[@]}" "$ROOT"
build "$MLFLOW_IMAGE" -f "$ROOT/images/Dockerfile.mlflow" "$ROOT/images"
say "run the pipeline in containers: kadet run --runner docker --image $IMAGE --data DIR"
