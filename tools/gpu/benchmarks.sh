#!/usr/bin/env bash
# The GPU benchmarks behind docs/performance.md, one step per table:
#   bash tools/gpu/benchmarks.sh STEP...          (kernels installed)
#   bash tools/gpu/offline_run.sh bash tools/gpu/benchmarks.sh STEP...   (offline machine)
# Steps (and the docs/performance.md section each reproduces):
#   fast_b8    1. batch 8, 15-60 s: the Conformer and both encoders with mixer mamba2 and
#                 cuda_graphs, timed in turn, without and with recompute_input_layer
#   fast_b1    1. the same at batches 8 and 1, without recompute_input_layer
#   b1_300     2. batch 1, 300 s, one process per model, graphed and eager, without and with
#                 recompute_input_layer
#   default    3. the default configuration (Mamba v1, eager) at every length, training and
#                 inference, with the plots
#   v1_graphs  4. the Mamba v1 mixer with cuda_graphs
#   packed     5. padded vs packed batch, graphed and eager
#   baselines  6. ESPnet's Conformer and E-Branchformer, each attention kind
#   decode     7. decoder step and whole beam search, graphs on and off
#   recipe     8. the mini recipe's seconds per epoch (tools/gpu/mini_synth_epochs.sh; needs the
#                 corpus or .gpu/recipe/mini_synth.tar)
#   espnet_train  through ESPnet's asr_train: seconds per 1,000 utterances of the shipped
#                 LibriSpeech-100 Samba-ASR and Speech-Mamba configs and ESPnet's Conformer, 600
#                 synthetic utterances of LibriSpeech's lengths, 4 epochs (the first 2 not counted)
#                 (benchmarks/asr_train_throughput.py; needs ESPnet's recipes in .cache/espnet-*,
#                 tools/fetch_espnet_recipes.sh, or BASELINE_CONFIG=<that Conformer yaml>)
#   espnet_train_graphed  the same with the encoders' CUDA graphs on (samba_asr_graphed,
#                 speech_mamba_graphed: cuda_graphs, batch_step 8, as the shipped configs now
#                 set them), beside the Conformer again
#   espnet_train_eager  the same with the graphs off (samba_asr_eager, speech_mamba_eager)
#   espnet_train_mamba2  the same with Samba-ASR's mixers Mamba2 (samba_asr_mamba2, 37.7M, and
#                 samba_asr_mamba2_graphed)
#   espnet_step_breakdown  one training step of the whole ESPnet model of each of those configs
#                 (and their _eager variants, samba_asr_mamba2_graphed) on the batch that batch_bins
#                 holds at 14 s: the host's time per part, the GPU work, the kernel launches
#                 (benchmarks/asr_step_breakdown.py)
#   espnet_decode through ESPnet's asr_inference, beam 10, CTC 0.3: real-time factor of the
#                 models espnet_train trained (run it first, same machine and SPEED_WORK), on 24
#                 utterances of LibriSpeech's lengths, batch 1 and 8
#                 (benchmarks/asr_inference_rtf.py)
#   espnet_decode_long  the same on four 60 s recordings
#   espnet_decode_same_scorer  espnet_decode's LibriSpeech-length set with the plugin's CTC prefix
#                 scorer for every model, ESPnet's Conformer too (ESPNET_MAMBA_CTC_PREFIX=all): how
#                 much of the decoding ratio is the scorer and how much the decoder
# Each step writes its JSON and an encoder_report.py table (STEP.md) to $OUT (default
# /tmp/benchmarks).  EXTRA_ARGS is added to every benchmark's options (e.g. "--device cpu --tiny"
# for a smoke run on a CPU; the espnet_* steps take only its --tiny).  SPEED_WORK (default
# /tmp/espnet_speed): the espnet_* steps' corpus, exp and decode dirs.  Exit status: 0 only if
# every step ran to the end.
set -uo pipefail
(($#)) || { sed -n '2,46p' "${BASH_SOURCE[0]}"; exit 2; }
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUT=${OUT:-/tmp/benchmarks}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
SPEED_WORK=${SPEED_WORK:-/tmp/espnet_speed}
# 4 epochs, the first 2 not counted: a graphed encoder captures each batch shape the second
# time it sees it, in the second epoch
SPEED_TRAIN=(--utts 600 --epochs 4 --skip-epochs 2) SPEED_DECODE=(--utts 24 --long-utts 4 --batch-sizes 1 8)
BREAKDOWN=(--seconds 14)
if [[ " ${EXTRA[*]} " == *" --tiny "* ]]; then
    SPEED_TRAIN=(--tiny --utts 8 --epochs 2)
    SPEED_DECODE=(--tiny --utts 2 --long-utts 1 --batch-sizes 1 2)
    BREAKDOWN=(--tiny --device cpu --seconds 1.5 --warmup 1 --steps 2)
fi
# BASELINE_CONFIG: ESPnet's Conformer config file itself, where .cache/espnet-* is not there
# (one small file to bring to an offline machine instead of ESPnet's whole source tree)
[[ -n ${BASELINE_CONFIG:-} ]] && SPEED_TRAIN+=(--baseline-config "$BASELINE_CONFIG") \
    && BREAKDOWN+=(--baseline-config "$BASELINE_CONFIG")
FAST=(conformer_sdpa samba_asr_mamba2_graphed speech_mamba_mamba2_graphed)
stage() { echo; echo "=== [$(date -u +%H:%M:%S)] $*"; }
failed=()
run() {  # run NAME COMMAND...: a failing command marks the step, the next ones still run
    local name=$1; shift
    "$@" || { echo "$name: exit $?"; [[ " ${failed[*]} " == *" $name "* ]] || failed+=("$name"); }
}
report() {  # report STEP JSON...: the tables of one step
    run "$1" python3 benchmarks/encoder_report.py "${@:2}" > "$OUT/$1.md" && cat "$OUT/$1.md"
}
interleaved() { python3 benchmarks/encoder_interleaved.py "$@" "${EXTRA[@]}"; }
train_speed() {  # train_speed STEP WORK_SUFFIX [ARGS...]: asr_train_throughput.py -> $OUT/STEP.json
    local step=$1 work=$SPEED_WORK$2
    shift 2
    # each asr_train run is cut at 320 s so one slow model cannot take the whole step
    # (Speech-Mamba's first epoch alone took 158 s on an H100: Triton's first use)
    run "$step" python3 benchmarks/asr_train_throughput.py --ngpu 1 "${SPEED_TRAIN[@]}" \
        --timeout 320 --work "$work" --out "$OUT/$step.json" "$@"
}
encoder() { python3 benchmarks/encoder_gpu.py "$@" "${EXTRA[@]}"; }

for step in "$@"; do
    stage "$step"
    case $step in
    fast_b8)
        run "$step" interleaved --models "${FAST[@]}" --modes train --batches 8 \
            --out "$OUT/fast_b8.json"
        run "$step" interleaved --models "${FAST[@]}" --modes train --batches 8 \
            --recompute-input-layer --out "$OUT/fast_b8_recompute.json"
        report fast_b8 "$OUT/fast_b8.json"
        report fast_b8_recompute "$OUT/fast_b8_recompute.json" ;;
    fast_b1)
        run "$step" interleaved --models "${FAST[@]}" --modes train --out "$OUT/fast_b1.json"
        report fast_b1 "$OUT/fast_b1.json" ;;
    b1_300)
        # one process per model: graph captures leave ~0.06 GiB allocated in a process
        jsons=()
        for model in conformer_sdpa samba_asr_mamba2_graphed speech_mamba_mamba2_graphed \
                     samba_asr_mamba2 speech_mamba_mamba2; do
            for recompute in "" --recompute-input-layer; do
                [[ $model == conformer_sdpa && -n $recompute ]] && continue
                json=$OUT/b1_300_$model${recompute:+_recompute}.json
                # shellcheck disable=SC2086  # $recompute: the flag or nothing
                run "$step" encoder --models "$model" --lengths 300 --batches 1 --modes train \
                    $recompute --out "$json"
                jsons+=("$json")
            done
        done
        report b1_300 "${jsons[@]}" ;;
    default)
        run "$step" encoder --models conformer_sdpa samba_asr speech_mamba \
            --out "$OUT/default.json"
        run "$step" python3 benchmarks/encoder_report.py "$OUT/default.json" \
            --plot-prefix "$OUT/default" > "$OUT/default.md" && cat "$OUT/default.md" ;;
    v1_graphs)
        run "$step" interleaved --models conformer_sdpa samba_asr_graphed speech_mamba_graphed \
            samba_asr_wide_graphed --modes train --out "$OUT/v1_graphs.json"
        for model in conformer_sdpa samba_asr_graphed; do  # one process each, as b1_300
            run "$step" encoder --models "$model" --lengths 300 --batches 1 --modes train \
                --out "$OUT/v1_graphs_300_$model.json"
        done
        report v1_graphs "$OUT/v1_graphs.json"
        report v1_graphs_300 "$OUT"/v1_graphs_300_{conformer_sdpa,samba_asr_graphed}.json ;;
    packed)
        run "$step" encoder --packed-only --packed-models samba_asr_mamba2_graphed \
            samba_asr_mamba2 speech_mamba_mamba2 --packed-paths fused --repeats 20 \
            --out "$OUT/packed.json"
        report packed "$OUT/packed.json" ;;
    baselines)
        run "$step" encoder --models conformer conformer_sdpa e_branchformer e_branchformer_sdpa \
            --modes train --out "$OUT/baselines.json"
        report baselines "$OUT/baselines.json" ;;
    decode)
        run "$step" python3 benchmarks/decode_gpu.py \
            --decoders transformer,samba_asr,speech_mamba,samba_asr_eager,speech_mamba_eager \
            --out "$OUT/decode.json" --plot "$OUT/decode.png" "${EXTRA[@]}" ;;
    recipe)
        run "$step" env OUT="$OUT" bash tools/gpu/mini_synth_epochs.sh ;;
    espnet_train)
        train_speed "$step" "" ;;
    espnet_train_graphed)
        train_speed "$step" _graphed --models samba_asr_graphed speech_mamba_graphed ;;
    espnet_train_eager)
        train_speed "$step" _eager --models samba_asr_eager speech_mamba_eager ;;
    espnet_train_mamba2)
        train_speed "$step" _mamba2 --models samba_asr_mamba2 samba_asr_mamba2_graphed ;;
    espnet_step_breakdown)
        run "$step" python3 benchmarks/asr_step_breakdown.py "${BREAKDOWN[@]}" \
            --models conformer samba_asr samba_asr_eager samba_asr_mamba2_graphed speech_mamba \
            speech_mamba_eager \
            --out "$OUT/$step.json" ;;
    espnet_decode_same_scorer)
        run "$step" env ESPNET_MAMBA_CTC_PREFIX=all python3 benchmarks/asr_inference_rtf.py \
            --ngpu 1 "${SPEED_DECODE[@]}" --sets librispeech --timeout 120 --work "$SPEED_WORK" \
            --out "$OUT/$step.json" ;;
    espnet_decode|espnet_decode_long)
        # one set a step: the two sets, 3 models x 2 batch sizes each, are about 8 minutes
        set_name=librispeech; [[ $step == espnet_decode_long ]] && set_name=long
        run "$step" python3 benchmarks/asr_inference_rtf.py --ngpu 1 "${SPEED_DECODE[@]}" \
            --sets "$set_name" --timeout 120 --work "$SPEED_WORK" --out "$OUT/$step.json" ;;
    *)
        echo "unknown step '$step' (see: bash $0)"; failed+=("$step") ;;
    esac
done

if ((${#failed[@]})); then
    stage "FAILED: ${failed[*]} (output in $OUT)"
    exit 1
fi
stage "done: $* (output in $OUT)"
