#!/usr/bin/env bash
# The README's main command: set up everything on a fresh machine and run the offline recipe
# egs2/mini_synth/asr1 end to end (synthetic corpus, training, decoding, scoring, packing).
#   bash tools/run_main.sh [run.sh options, e.g. --smoke true]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { echo "=== [run_main $(date +%H:%M:%S)] $*"; }
step "1/3 Python environment (.venv)"
bash tools/setup_env.sh .venv || { echo "error: environment set-up failed (see above)" >&2; exit 1; }
step "2/3 recipe dependencies (espeak-ng, flite, sox, py-nanotts)"
bash tools/install_recipe_deps.sh .venv || { echo "error: recipe dependencies failed" >&2; exit 1; }
step "3/3 egs2/mini_synth/asr1/run.sh $*"
VIRTUAL_ENV=$PWD/.venv exec bash egs2/mini_synth/asr1/run.sh "$@"
