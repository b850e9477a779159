#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install espnet-mamba into it.
#   bash tools/setup_env.sh [VENV_DIR]     (default .venv)
# Only PyPI is needed.  Every install goes through constraints.txt, which pins torch with its
# companions (torchaudio) and ESPnet to the versions the tests ran with; torch 2.11.0 from PyPI is
# the CUDA build, which also runs on CPU-only machines.  Re-running it is cheap (nothing to fetch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${1:-.venv}
CONSTRAINTS=$PWD/constraints.txt
step() { echo "=== [setup_env $(date +%H:%M:%S)] $*"; }
if [[ ! -x $VENV/bin/python ]]; then
    PY=$(bash tools/find_python.sh)
    step "creating $VENV with $PY ($("$PY" --version))"
    "$PY" -m venv "$VENV"
fi
# pip's own lines, one per package fetched or installed (sizes included): readable in a log
# file, unlike its progress bars
pip_install() {
    "$VENV/bin/python" -m pip --disable-pip-version-check install --progress-bar off \
        -c "$CONSTRAINTS" "$@" 2>&1 \
        | { grep --line-buffered -E '^(Downloading|Successfully installed|ERROR|error)|^ +(error|×)' \
            || true; } | sed -u 's/^/  /'
}
step "pip, wheel, setuptools (as constraints.txt allows)"
pip_install --upgrade pip wheel setuptools \
    || { echo "error: upgrading pip/wheel/setuptools failed" >&2; exit 1; }
step "torch and torchaudio (constraints.txt; about 3 GB the first time)"
pip_install torch torchaudio || { echo "error: torch install failed" >&2; exit 1; }
step "espnet-mamba with its dependencies (espnet, constraints.txt) and the test tools"
rm -rf build  # setuptools' staging folder: files of an earlier version there would be installed too
pip_install ".[test]" || { echo "error: pip install -c constraints.txt .[test] failed" >&2; exit 1; }
"$VENV/bin/python" -m pip --disable-pip-version-check check \
    || { echo "error: the environment has conflicting requirements (above)" >&2; exit 1; }
# ESPnet's import prints a harmless "Failed to import Flash Attention" on stderr: shown on failure only
"$VENV/bin/python" - 2>"$VENV/import_check.err" <<'EOF' \
    || { cat "$VENV/import_check.err" >&2; echo "error: the installed packages do not import (above)" >&2; exit 1; }
import importlib.metadata as m
import espnet2.tasks.asr  # noqa: F401  (loads torchaudio's library: fails on a mismatched pair)
print("  " + ", ".join(f"{p} {m.version(p)}" for p in
                       ("torch", "torchaudio", "espnet", "espnet-mamba")))
EOF
step "done: $VENV"
