#!/usr/bin/env bash
# The GPU checks: the GPU-marked tests, then a short training and decoding of each model through
# ESPnet's stock asr_train / asr_inference.  Needs a CUDA GPU with mamba-ssm and causal-conv1d
# installed; on a machine without network:
#   bash tools/gpu/offline_run.sh bash tools/gpu/gpu_tests.sh
# Parts (PARTS picks some, default "tests packed train"):
#   tests   pytest -m gpu tests/gpu -k "not packed": the CUDA kernels against the PyTorch path,
#           decoders, beam search and CUDA graphs on the GPU (12-15 min on an H100, mostly triton
#           compiling kernels on first use); PYTEST_K narrows it (pytest -k)
#   packed  the packed-batch tests, with MAMBA_DETERMINISTIC=1: mamba-ssm then keeps one triton
#           configuration per kernel (about 1 min); autotuning all of them for every new seq_idx
#           specialisation takes over 10 min
#   train   tools/gpu/train_check.py: 288 steps of each model with bf16 autocast, then decoding
#           (TRAIN_MODELS picks models: samba_asr speech_mamba samba_asr_mamba2)
# Logs and JSON go to $OUT (default /tmp/gpu_tests).  Exit status: 0 only if every part passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-/tmp/gpu_tests}; mkdir -p "$OUT"
PARTS=" ${PARTS:-tests packed train} "
export PYTHONUNBUFFERED=1
part() { [[ $PARTS == *" $1 "* ]]; }
stage() { echo; echo "=== [$(date -u +%H:%M:%S)] $*"; }

# A per-test limit where pytest-timeout is installed: a test stalled in triton's autotuning then
# fails alone instead of holding up the rest.
limit() { python3 -c 'import pytest_timeout' 2>/dev/null && echo "--timeout $1"; }
PYTEST=(python3 -m pytest -m gpu tests/gpu -v -rA --tb=short -p no:cacheprovider)
failed=()

if part tests; then
    stage "GPU tests (all but the packed ones)"
    # shellcheck disable=SC2046  # limit prints two words or none
    "${PYTEST[@]}" -k "not packed${PYTEST_K:+ and ($PYTEST_K)}" $(limit 300) 2>&1 |
        tee "$OUT/pytest_gpu.log"
    ((PIPESTATUS[0] == 0)) || failed+=(tests)
fi
if part packed; then
    stage "GPU tests of packed batches"
    # shellcheck disable=SC2046
    MAMBA_DETERMINISTIC=1 "${PYTEST[@]}" -k packed $(limit 900) 2>&1 |
        tee "$OUT/pytest_packed.log"
    ((PIPESTATUS[0] == 0)) || failed+=(packed)
fi
if part train; then
    stage "training and decoding through asr_train / asr_inference"
    # shellcheck disable=SC2086  # TRAIN_MODELS is a word list
    python3 tools/gpu/train_check.py "$OUT/train_check" ${TRAIN_MODELS:+--models $TRAIN_MODELS} 2>&1 |
        tee "$OUT/train_check.log"
    ((PIPESTATUS[0] == 0)) || failed+=(train)
fi

if ((${#failed[@]})); then
    stage "FAILED: ${failed[*]} (logs in $OUT)"
    exit 1
fi
stage "all passed:${PARTS% }"
