#!/usr/bin/env bash
# What the H100 runs for issues 6 and 7 once tools/gpu/session.sh has set the machine up:
#   call 1: bash tools/gpu/detached.sh start 555 bash tools/gpu/plan_issue6_7.sh
#           carry [".gpu/wheels", ".gpu/sdist", ".gpu/kernels"] (all of .gpu with both prebuilt
#           kernel archives is over a call's 64 MiB: keep only causal_conv1d's in .gpu/kernels)
#   call 2+: bash tools/gpu/detached.sh wait 585
# STEPS (comma list, default all but export, in this order) picks what runs:
#   export   first: the built kernels into $OUT (xz parts, one archive per package) for a later
#            machine of the same GPU architecture (tools/gpu/export_kernels.sh)
#   diag     tools/gpu/graphs_diag.py: the encoders' cuda_graphs under capture modes, and the
#            memory a graphed encoder leaves after clear() (~2 min)
#   tests    pytest -m gpu tests/gpu except the packed ones, alone on the GPU (beside six
#            training runs it took 17 min instead of a few: 2026-11-22), 300 s per test at most;
#            TESTS_K="cuda_graph or beam" narrows them (pytest -k)
#   amp      tools/gpu/amp_check.py (six trainings at once, ~7 min); AMP_ARGS adds options,
#            e.g. "--models samba_asr --dtypes fp16" for the fp16 overflow of samba_asr;
#            AMP_DEADLINE (default 480 s); AMP_BESIDE_TESTS=1 runs it beside the tests
#   decode   benchmarks/decode_gpu.py, ours with and without CUDA graphs (about 4 min; DECODERS
#            picks them, comma list), and a profile of one whole decode per decoder
#   encoder  benchmarks/encoder_gpu.py; ENCODER_MODELS picks the models (default: all); the
#            packed-vs-padded batch too (PACKED_BATCH=0: not); ENCODER_ARGS adds options (e.g. --lengths 15 30
#            --profile-dir "$OUT/profiles")
#   fresh    benchmarks/encoder_gpu.py once per model of FRESH_MODELS, each in its own process
#            (FRESH_ARGS; default B1 300 s training): a graphed model's peak without the ~0.06 GiB
#            per capture that earlier settings' captures leave allocated in the process;
#            FRESH_TAG names the files apart for a second pass with other FRESH_ARGS, e.g.
#            FRESH_TAG=_recomputed FRESH_ARGS="--lengths 300 --batches 1 --modes train
#            --recompute-input-layer"
#   interleaved  benchmarks/encoder_interleaved.py: 15/30/60 s with the models timed in turn
#            (host noise hits all alike); INTERLEAVED_MODELS picks them (default: conformer_sdpa
#            samba_asr speech_mamba samba_asr_wide), INTERLEAVED_ARGS adds options (~3 min)
#   recipe   tools/gpu/recipe_gpu.sh: the mini recipe's asr_train --ngpu 1, seconds per epoch of
#            the Conformer and the two Mamba configs, each also with cuda_graphs (5 trainings,
#            about 10 min; RECIPE_RUNS="conformer samba_asr ..." picks some); needs .gpu/recipe
#            (tools/gpu/pack_recipe_audio.py pack .gpu/recipe/mini_synth.tar: 15 MiB)
#   packed   tools/gpu/packed_diag.py: each seq_idx piece vs each sequence alone (a few minutes)
#   packedenc  tools/gpu/packed_encoder_diag.py: the packed GPU test's encoders, call by call
#   hostprof tools/gpu/mamba2_host_profile.py: cProfile of one eager Mamba2 mixer (~1 min)
#   packedbench  benchmarks/encoder_gpu.py --packed-only: padded vs packed, per packed path of
#            PACKED_PATHS (default "fused") and model of PACKED_MODELS (a *_graphed model: both
#            padded and packed with cuda_graphs); PACKED_ARGS adds options (e.g. --profile-dir
#            "$OUT/profiles": a profile of each padded and packed step)
#   packedtests  the packed GPU tests (triton autotunes the seq_idx kernels: minutes per test;
#            PACKED_TESTS_DETERMINISTIC=1 keeps one config per kernel)
# A machine goes back after 30 minutes held: with the kernel build (~3.5 min with causal_conv1d
# prebuilt) tests+amp+decode+encoder about fill one; recipe and packed need a second.
# Each step's output is in $OUT (returned as one job.tgz by detached.sh); a failing step does not
# stop the next one.  Session 1 of 2026-11-22 ran tests+amp together, then decode, then encoder
# (cut at speech_mamba inference when the device time ran out).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
STEPS=",${STEPS:-tests,amp,decode,encoder,interleaved,recipe,packed,packedbench,packedtests},"
step() { echo; echo "=== [$(date -u +%H:%M:%S)] $*"; }
want() { [[ $STEPS == *",$1,"* ]]; }

if want export; then
    step "kernels for later machines"
    bash tools/gpu/export_kernels.sh "$OUT" || echo "export failed"
fi
run_amp() {
    # shellcheck disable=SC2086
    python3 tools/gpu/amp_check.py /tmp/amp_check --ngpu 1 --deadline "${AMP_DEADLINE:-480}" \
        ${AMP_ARGS:-} > "$OUT/amp_check.log" 2>&1
    echo "amp_check exit $?"; tail -n 30 "$OUT/amp_check.log"
    cp /tmp/amp_check/amp_check.json "$OUT/" 2>/dev/null
}
# AMP_BESIDE_TESTS=1: amp trains beside the GPU tests (correctness only, nothing timed; session 4
# did so to fit one 30-minute machine)
amp_pid=
if want amp && ((${AMP_BESIDE_TESTS:-0})); then
    step "amp_check (in the background, beside the tests)"
    run_amp > "$OUT/amp_step.log" 2>&1 &
    amp_pid=$!
fi

if want diag; then
    step "cuda_graphs diagnostics (capture modes, memory after clear)"
    python3 tools/gpu/graphs_diag.py --out "$OUT" > "$OUT/graphs_diag.log" 2>&1
    echo "graphs_diag exit $?"; tail -n 60 "$OUT/graphs_diag.log"
fi

if want tests; then
    step "GPU tests"
    # per-test limit: session 3 lost a call to one test stalled in triton's autotuning
    # (the packed tests run in step `packed`: their triton autotuning can take many minutes);
    # TESTS_K narrows the selection (pytest -k)
    python3 -m pytest -m gpu tests/gpu -k "not packed${TESTS_K:+ and ($TESTS_K)}" -v -rA \
        --tb=short -p no:cacheprovider --timeout "${TEST_TIMEOUT:-300}" \
        -o faulthandler_timeout=240 > "$OUT/pytest_gpu.log" 2>&1
    echo "pytest exit $?"; tail -n 40 "$OUT/pytest_gpu.log"
fi

if want amp; then
    if [[ -n $amp_pid ]]; then
        wait "$amp_pid"; cat "$OUT/amp_step.log"
    else
        step "amp_check"
        run_amp
    fi
fi

if want decode; then
    step "decoding benchmark"
    python3 benchmarks/decode_gpu.py --device cuda --out "$OUT/decode_h100.json" \
        --decoders "${DECODERS:-transformer,samba_asr,speech_mamba,samba_asr_eager,speech_mamba_eager}" \
        --plot "$OUT/decode_h100.png" --profile "$OUT/decode_profile.txt" \
        --profile-decode "$OUT/decode_profile_whole.txt" 2>&1 |
        tee "$OUT/decode_bench.log" | tail -n 40
fi

if want encoder; then
    step "encoder benchmark"
    # shellcheck disable=SC2086  # ENCODER_MODELS is a word list
    python3 benchmarks/encoder_gpu.py --out "$OUT/encoder_h100.json" \
        $( ((${PACKED_BATCH:-1})) && echo --packed) \
        ${ENCODER_MODELS:+--models $ENCODER_MODELS} \
        --packed-models samba_asr_mamba2 speech_mamba_mamba2 ${ENCODER_ARGS:-} 2>&1 |
        tee "$OUT/encoder_bench.log" | tail -n 80
fi

if want fresh; then
    step "encoder benchmark, one process per model (no memory left over from other settings)"
    # shellcheck disable=SC2086  # word lists
    for model in ${FRESH_MODELS:-conformer_sdpa samba_asr_mamba2_graphed speech_mamba_mamba2_graphed}; do
        python3 benchmarks/encoder_gpu.py --out "$OUT/encoder_fresh_$model${FRESH_TAG:-}.json" \
            --models "$model" ${FRESH_ARGS:---lengths 300 --batches 1 --modes train} 2>&1 |
            tee -a "$OUT/encoder_fresh${FRESH_TAG:-}.log" | grep -E "train|infer|rror"
        echo "$model: exit ${PIPESTATUS[0]}"
    done
fi

if want interleaved; then
    step "encoder benchmark, the models in turn (short lengths)"
    # shellcheck disable=SC2086  # word lists
    python3 benchmarks/encoder_interleaved.py --out "$OUT/encoder_interleaved_h100.json" \
        ${INTERLEAVED_MODELS:+--models $INTERLEAVED_MODELS} ${INTERLEAVED_ARGS:-} 2>&1 |
        tee "$OUT/encoder_interleaved.log" | tail -n 60
fi

if want recipe; then
    step "mini recipe on the GPU"
    bash tools/gpu/recipe_gpu.sh 2>&1 | tail -n 20
fi

if want packed; then
    step "packed: the seq_idx pieces vs each sequence alone (tools/gpu/packed_diag.py)"
    # MAMBA_DETERMINISTIC=1: one autotuning config per kernel (the diag's docstring says why)
    MAMBA_DETERMINISTIC=1 PYTHONFAULTHANDLER=1 timeout -s ABRT 420 \
        python3 tools/gpu/packed_diag.py "$OUT/packed_diag.json" > "$OUT/packed_diag.log" 2>&1
    echo "packed_diag exit $?"; grep -v "^ " "$OUT/packed_diag.log" | tail -n 40
fi

if want packedenc; then
    step "packed vs padded tiny encoders, mixer call by mixer call (tools/gpu/packed_encoder_diag.py)"
    MAMBA_DETERMINISTIC=1 PYTHONFAULTHANDLER=1 timeout -s ABRT 420 python3 \
        tools/gpu/packed_encoder_diag.py "$OUT/packed_encoder_diag.json" \
        > "$OUT/packed_encoder_diag.log" 2>&1
    echo "packed_encoder_diag exit $?"; grep -v "^ \{4\}" "$OUT/packed_encoder_diag.log" | tail -n 40
fi

if want hostprof; then
    step "host time of one eager Mamba2 mixer (tools/gpu/mamba2_host_profile.py)"
    timeout 240 python3 tools/gpu/mamba2_host_profile.py "$OUT" > "$OUT/mamba2_host_profile.log" 2>&1
    echo "host profile exit $?"; cat "$OUT/mamba2_host_profile.log"
fi

if want packedbench; then
    step "packed vs padded training step, packed paths: ${PACKED_PATHS:-fused}"
    # shellcheck disable=SC2086
    timeout 540 python3 benchmarks/encoder_gpu.py --out "$OUT/packed_h100.json" --packed-only \
        --packed-models ${PACKED_MODELS:-samba_asr_mamba2_graphed samba_asr_mamba2 speech_mamba_mamba2} \
        --packed-paths ${PACKED_PATHS:-fused} ${PACKED_ARGS:-} 2>&1 |
        tee "$OUT/packed_bench.log" | grep -E "packed\]|profile"
    echo "packed bench exit ${PIPESTATUS[0]}"
fi

if want packedtests; then
    step "packed GPU tests"
    MAMBA_DETERMINISTIC=${PACKED_TESTS_DETERMINISTIC:-0} python3 -m pytest -m gpu tests/gpu \
        -k packed -v -rA --tb=short -p no:cacheprovider --timeout 900 \
        -o faulthandler_timeout=600 > "$OUT/pytest_packed.log" 2>&1
    echo "pytest packed exit $?"; tail -n 25 "$OUT/pytest_packed.log"
fi

step "plan done"
