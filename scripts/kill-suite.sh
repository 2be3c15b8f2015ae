#!/usr/bin/env bash
# One command: kill -9 `kadet run` at every stage boundary and inside the registry path, rerun after
# each, and print the table (kill point, what the rerun reused, versions in the registry):
# tests/system/test_kills.py, marked `full` (CI runs a three-point chain of it). Needs the repo's
# .venv (bash scripts/bootstrap.sh --dev) and ../shared/data (SciFact). About 20 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
table="${KADET_KILL_TABLE:-$(mktemp /tmp/kadet-kills-XXXX.md)}"
KADET_KILL_TABLE="$table" .venv/bin/python -m pytest -m full -s -p no:cacheprovider \
  tests/system/test_kills.py -k every_point "$@"
echo "table: $table"
