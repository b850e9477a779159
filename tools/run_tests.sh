#!/usr/bin/env bash
# The README's test command: set up the environment (tools/setup_env.sh and the recipe's
# Debian/PyPI dependencies), then run the CPU tests.
#   bash tools/run_tests.sh [pytest args...]
# GPU tests are marked `gpu` and deselected here; on a GPU machine run them with
#   bash tools/gpu/offline_run.sh bash tools/gpu/gpu_tests.sh   (tools/gpu/README.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh .venv
bash tools/install_recipe_deps.sh .venv  # recipe tests: TTS engines, sox, flac, sclite (sctk)
echo "=== [run_tests $(date +%H:%M:%S)] pytest (CPU)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} exec .venv/bin/python -m pytest -m "not gpu" -q "$@"
