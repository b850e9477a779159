#!/usr/bin/env bash
# What a device call runs after tools/gpu/session.sh has set the machine up (issue 2/3 checks):
#   run(command="bash tools/gpu/session.sh bash tools/gpu/checks.sh", carry=[".gpu"], timeout_s=600)
# Records mamba-ssm's parameter layout and runs the GPU-marked tests; results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 tools/record_mamba_ssm_params.py --out "$OUT/mamba_ssm_params.json"
python3 -m pytest -m gpu tests -q -p no:cacheprovider -rA 2>&1 | tee "$OUT/pytest_gpu.log"
exit "${PIPESTATUS[0]}"
