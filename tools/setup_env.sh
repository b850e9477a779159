#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install espnet-mamba into it.
#   bash tools/setup_env.sh [VENV_DIR]     (default .venv)
# Only PyPI is needed.  torch is pinned to the build that the GPU machines run (2.11.0); it is
# the CUDA build from PyPI, which also runs on CPU-only machines.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${1:-.venv}
step() { echo "=== [setup_env $(date +%H:%M:%S)] $*"; }
if [[ ! -x $VENV/bin/python ]]; then
    PY=$(bash tools/find_python.sh)
    step "creating $VENV with $PY ($("$PY" --version))"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
step "installing torch 2.11.0 (several GB the first time)"
"${PIP[@]}" install --upgrade pip wheel "setuptools>=64"
"${PIP[@]}" install torch==2.11.0 || { echo "error: torch install failed" >&2; exit 1; }
step "installing espnet-mamba with its dependencies (espnet 202611) and test tools"
"${PIP[@]}" install ".[test]" || { echo "error: pip install .[test] failed" >&2; exit 1; }
"$VENV/bin/python" -c "import espnet2, espnet_mamba; print('espnet', espnet2.__version__ if hasattr(espnet2, '__version__') else '', 'espnet_mamba', espnet_mamba.__version__)"
step "done: $VENV"
