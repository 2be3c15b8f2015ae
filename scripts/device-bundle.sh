#!/usr/bin/env bash
# Pack device-bundle/ (git-ignored, <= 60 MiB) for the GPU check, benchmarks/studies/device_check.py:
#   scripts/device-bundle.sh --labels PATH/label/labels.jsonl    # the labels of a CPU run you have
#   scripts/device-bundle.sh                                     # make them here first (slow)
# Every option: python -m benchmarks.studies.device_bundle --help
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
cd "$repo"
exec "$python" -m benchmarks.studies.device_bundle "$@"
