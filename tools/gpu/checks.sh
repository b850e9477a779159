#!/usr/bin/env bash
# What a device call runs after tools/gpu/session.sh has set the machine up (issues 2 and 3):
# records mamba-ssm's parameter layout, runs the GPU-marked tests, then a few hundred training
# steps of each model through the stock asr_train --ngpu 1 with bf16 autocast.  Results in $OUT.
#   bash tools/gpu/session.sh bash tools/gpu/checks.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 tools/record_mamba_ssm_params.py --out "$OUT/mamba_ssm_params.json"
# -v and --tb=short print each result as it happens (a killed run still shows what failed)
python3 -m pytest -m gpu tests/gpu -v -rA --tb=short -p no:cacheprovider 2>&1 |
    tee "$OUT/pytest_gpu.log"
python3 tools/gpu/train_check.py /tmp/train_check ${TRAIN_MODELS:+--models $TRAIN_MODELS} 2>&1 | tee "$OUT/train_check.log"
cp /tmp/train_check/train_check.json "$OUT/" 2>/dev/null
tar czf "$OUT/train_logs.tgz" -C /tmp/train_check --wildcards '*/train.log' '*/decode.log' \
    '*/config.yaml' 2>/dev/null
exit 0
