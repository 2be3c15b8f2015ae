#!/usr/bin/env bash
# One command: build the images for real (make -C images local) and run the whole DAG inside them
# on a SciFact slice, against MLflow in its image and a real S3 server (tests/deploy/test_containers.py,
# marked `full`: CI skips it). Needs the repo's .venv (bash scripts/bootstrap.sh --dev) and root
# (podman is installed if neither docker nor podman works).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -m full -s -p no:cacheprovider tests/deploy/test_containers.py "$@"
