#!/usr/bin/env bash
# What the H100 runs for issues 6 and 7 once tools/gpu/session.sh has set the machine up:
#   call 1: bash tools/gpu/detached.sh start 560 bash tools/gpu/plan_issue6_7.sh   (carry .gpu)
#   call 2+: bash tools/gpu/detached.sh wait 560
# 1. the mixed-precision runs (tools/gpu/amp_check.py, 6 trainings) in the background while the
#    GPU tests run (correctness only, so sharing the GPU does not matter);
# 2. then, alone on the GPU, the decoding and encoder benchmarks (timings);
# 3. the built kernels packed into $OUT (xz, <= 15 MiB parts) so that a later machine of the
#    same architecture can skip the 7-minute build (tools/gpu/session.sh looks in .gpu/kernels).
# Each step's output is in $OUT; a step that fails does not stop the next one.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
step() { echo; echo "=== [$(date -u +%H:%M:%S)] $*"; }

step "amp_check (background) + GPU tests"
python3 tools/gpu/amp_check.py /tmp/amp_check --ngpu 1 --deadline 420 > "$OUT/amp_check.log" 2>&1 &
amp_pid=$!
python3 -m pytest -m gpu tests/gpu -v -rA --tb=short -p no:cacheprovider > "$OUT/pytest_gpu.log" 2>&1
echo "pytest exit $?"; tail -n 40 "$OUT/pytest_gpu.log"
wait "$amp_pid"; echo "amp_check exit $?"; tail -n 30 "$OUT/amp_check.log"
cp /tmp/amp_check/amp_check.json "$OUT/" 2>/dev/null

step "decoding benchmark"
python3 benchmarks/decode_gpu.py --device cuda --out "$OUT/decode_h100.json" \
    --plot "$OUT/decode_h100.png" --profile "$OUT/decode_profile.txt" 2>&1 |
    tee "$OUT/decode_bench.log" | tail -n 40

step "encoder benchmark"
python3 benchmarks/encoder_gpu.py --out "$OUT/encoder_h100.json" --packed \
    --packed-models samba_asr_mamba2 speech_mamba_mamba2 2>&1 | tee "$OUT/encoder_bench.log" | tail -n 80

step "kernels for later machines"
bash tools/gpu/export_kernels.sh "$OUT" || echo "export failed"
step "plan done"
