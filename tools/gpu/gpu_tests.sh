#!/usr/bin/env bash
# The GPU checks: the GPU-marked tests, then a short training and decoding of each model through
# ESPnet's stock asr_train / asr_inference.  Needs a CUDA GPU with mamba-ssm and causal-conv1d
# installed; on a machine without network:
#   bash tools/gpu/offline_run.sh bash tools/gpu/gpu_tests.sh
# Parts (PARTS picks some, default "paths models graphed packed captures train"); each fits a
# 10-minute command on a machine whose kernels are built (run the kernel build first:
# tools/gpu/offline_run.sh with PARTS=none, then the parts one call at a time):
#   paths   tests/gpu/test_cuda_paths.py: the CUDA kernels against the PyTorch path (scans, conv,
#           norms, both mixers fused and unfused, step, the conv-width fallback)
#   models  tests/gpu/test_models_cuda.py but the packed tests: padding invariance, decoders,
#           beam search, decoder CUDA graphs, NaN rows, and any other tests/gpu file not
#           named here
#   graphed tests/gpu/test_graphed_encoder_cuda.py but the packed tests: training graphs
#   packed  the packed-batch tests, with MAMBA_DETERMINISTIC=1: mamba-ssm then keeps one triton
#           configuration per kernel (about 1 min); autotuning all of them for every new seq_idx
#           specialisation takes over 10 min
#   captures tools/gpu/repeat_captures.py: the training graphs captured in CAPTURE_PROCESSES
#           (default 8) fresh processes with empty triton caches, each keeping its steps'
#           outputs; every capture must succeed (about 50 s a process on an H100: triton compiles
#           its kernels anew in each)
#   train   tools/gpu/train_check.py: 288 steps of each model with bf16 autocast, then decoding
#           (TRAIN_MODELS picks models: samba_asr speech_mamba samba_asr_mamba2)
# PYTEST_K narrows the pytest parts further (pytest -k).  Triton compiles kernels on first use:
# the first part run on a fresh machine takes longest.
# Logs and JSON go to $OUT (default /tmp/gpu_tests).  Exit status: 0 only if every part passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-/tmp/gpu_tests}; mkdir -p "$OUT"
PARTS=" ${PARTS:-paths models graphed packed captures train} "
export PYTHONUNBUFFERED=1
part() { [[ $PARTS == *" $1 "* ]]; }
stage() { echo; echo "=== [$(date -u +%H:%M:%S)] $*"; }

# A per-test limit where pytest-timeout is installed: a test stalled in triton's autotuning then
# fails alone instead of holding up the rest.
limit() { python3 -c 'import pytest_timeout' 2>/dev/null && echo "--timeout $1"; }
PYTEST=(python3 -m pytest -m gpu -v -rA --tb=short -p no:cacheprovider)
failed=()

# pytest over some files, without the packed tests: run_pytest NAME FILE...
run_pytest() {
    local name=$1; shift
    stage "GPU tests: $name"
    # shellcheck disable=SC2046  # limit prints two words or none
    "${PYTEST[@]}" "$@" -k "not packed${PYTEST_K:+ and ($PYTEST_K)}" $(limit 300) 2>&1 |
        tee "$OUT/pytest_$name.log"
    ((PIPESTATUS[0] == 0)) || failed+=("$name")
}
others=$(ls tests/gpu/test_*.py | grep -v -e test_cuda_paths.py -e test_graphed_encoder_cuda.py)
if part paths; then run_pytest paths tests/gpu/test_cuda_paths.py; fi
# shellcheck disable=SC2086  # a list of files
if part models; then run_pytest models $others; fi
if part graphed; then run_pytest graphed tests/gpu/test_graphed_encoder_cuda.py; fi
if part packed; then
    stage "GPU tests of packed batches"
    # shellcheck disable=SC2046
    MAMBA_DETERMINISTIC=1 "${PYTEST[@]}" tests/gpu -k packed $(limit 900) 2>&1 |
        tee "$OUT/pytest_packed.log"
    ((PIPESTATUS[0] == 0)) || failed+=(packed)
fi
if part captures; then
    stage "training-graph captures in fresh processes"
    python3 tools/gpu/repeat_captures.py --processes "${CAPTURE_PROCESSES:-8}" \
        --out "$OUT/captures.json" 2>&1 | tee "$OUT/captures.log"
    ((PIPESTATUS[0] == 0)) || failed+=(captures)
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
