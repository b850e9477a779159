#!/usr/bin/env bash
# The README's main command: set up everything on a fresh machine and run the offline recipe
# egs2/mini_synth/asr1 end to end (synthetic corpus, training, decoding, scoring, packing).
#   bash tools/run_main.sh [run.sh options, e.g. --smoke true]
#   bash tools/run_main.sh --help            (the recipe's options; installs nothing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RECIPE=egs2/mini_synth/asr1/run.sh
for a in "$@"; do
    if [[ $a == -h || $a == --help ]]; then
        echo "bash tools/run_main.sh [OPTIONS]: set up .venv and the recipe's tools, then run $RECIPE"
        echo
        exec bash "$RECIPE" --help
    fi
done
step() { echo "=== [run_main $(date +%H:%M:%S)] $*"; }
step "1/3 Python environment (.venv)"
bash tools/setup_env.sh .venv || { echo "error: environment set-up failed (see above)" >&2; exit 1; }
step "2/3 recipe dependencies (espeak-ng, flite, sox, flac, sctk, py-nanotts)"
bash tools/install_recipe_deps.sh .venv || { echo "error: recipe dependencies failed" >&2; exit 1; }
step "3/3 $RECIPE $*"
VIRTUAL_ENV=$PWD/.venv exec bash "$RECIPE" "$@"
