#!/usr/bin/env bash
# What the 2-GPU H200 machine runs (issue 7, and the two GPU questions left open on the H100),
# once tools/gpu/session.sh has set it up:
#   call 1: bash tools/gpu/detached.sh start 555 bash tools/gpu/plan_two_gpu.sh  (carry .gpu/wheels,
#           .gpu/sdist, .gpu/kernels: causal_conv1d prebuilt, mamba_ssm built there in ~3 min)
#   call 2: bash tools/gpu/detached.sh wait 585
# 1. at once, one GPU each:
#    GPU 0: the packed-encoder GPU test that hung on the H100 (2026-11-22, session 3) and
#           tools/gpu/packed_diag.py, each under a time limit with Python's faulthandler, so a
#           hang leaves the stack of every thread in the log instead of nothing;
#    GPU 1: samba_asr under fp16 autocast through asr_train with tools/gpu/nonfinite_probe.py
#           (amp_check.py --probe-nonfinite): the first module whose output is inf/NaN.
# 2. tools/gpu/ddp_check.py on both GPUs: ESPnet's --ngpu 2 DDP training of each model, and one
#    step's DDP gradients vs a single-process step on the same global batch.
# STEPS (comma list, default "probe,ddp") picks what runs; DDP_PARTS (default "b a") which parts
# of ddp_check.py.  Session 4 ran STEPS=ddp DDP_PARTS=a: part A alone, to its exit status (session
# 3's device time ran out during its epoch 2).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
STEPS=",${STEPS:-probe,ddp},"
step() { echo; echo "=== [$(date -u +%H:%M:%S)] $*"; }
want() { [[ $STEPS == *",$1,"* ]]; }

if want probe; then
step "GPU 0: packed test + diagnostic | GPU 1: fp16 probe"
(
    export CUDA_VISIBLE_DEVICES=0
    timeout -s INT 150 python3 -m pytest -m gpu tests/gpu/test_models_cuda.py -k packed -v -rA \
        --tb=short -p no:cacheprovider -o faulthandler_timeout=60 > "$OUT/pytest_packed.log" 2>&1
    echo "pytest packed exit $?" >> "$OUT/pytest_packed.log"
    # SIGABRT: faulthandler prints every thread's stack before the process dies
    timeout -s ABRT 90 python3 tools/gpu/packed_diag.py > "$OUT/packed_diag.log" 2>&1
    echo "packed_diag exit $?" >> "$OUT/packed_diag.log"
) &
packed=$!
(
    export CUDA_VISIBLE_DEVICES=1
    python3 tools/gpu/amp_check.py /tmp/amp_probe --ngpu 1 --models samba_asr --dtypes fp16 \
        --steps 200 --epochs 2 --probe-nonfinite --deadline 150 > "$OUT/amp_probe.log" 2>&1
    echo "amp_check exit $?" >> "$OUT/amp_probe.log"
    cp /tmp/amp_probe/amp_check.json "$OUT/amp_probe.json" 2>/dev/null
    grep -h "\[probe\]" /tmp/amp_probe/*/train.log > "$OUT/probe_lines.log" 2>/dev/null
) &
probe=$!
wait $packed; tail -n 25 "$OUT/pytest_packed.log"; tail -n 30 "$OUT/packed_diag.log"
wait $probe; tail -n 12 "$OUT/amp_probe.log"; head -n 30 "$OUT/probe_lines.log"
fi

if want ddp; then
step "DDP check on both GPUs"
nvidia-smi --query-gpu=index,name,memory.used --format=csv
# shellcheck disable=SC2086  # DDP_PARTS is a word list
python3 tools/gpu/ddp_check.py /tmp/ddp_check --parts ${DDP_PARTS:-b a} --epochs 2 --iters 20 \
    --timeout 300 > "$OUT/ddp_check.log" 2>&1
echo "ddp_check exit $?"; tail -n 40 "$OUT/ddp_check.log"
cp /tmp/ddp_check/ddp_check.json "$OUT/" 2>/dev/null
# each run's asr_train log (rank 0's lines), not its checkpoints
for log in /tmp/ddp_check/*-ddp/train.log; do
    [[ -f $log ]] && cp "$log" "$OUT/ddp_partA_$(basename "$(dirname "$log")" -ddp).train.log"
done
fi
step "plan done"
