#!/usr/bin/env bash
# Seconds per training epoch of the mini recipe (egs2/mini_synth/asr1) on one GPU, through the
# stock `asr_train --ngpu 1`: the Conformer baseline and the two Mamba configs, each also with
# the encoders' cuda_graphs, on the same data, batches and epochs.
#   bash tools/gpu/mini_synth_epochs.sh          (RECIPE_MAX_EPOCH=3 cuts the configs' 6 epochs;
#                                                 RECIPE_RUNS="conformer samba_asr" picks runs)
# Writes $OUT/recipe_gpu.json (after each run, so finished runs survive an interrupted one), the
# runs' logs and train.logs (OUT defaults to /tmp/mini_synth_epochs).  Stages 1-3 (corpus,
# tokens, stats) run once on the CPU cores.  On a machine without the TTS engines, stage 1 is
# replaced by the train and dev sets packed where the corpus was made
# (tools/gpu/pack_recipe_audio.py pack .gpu/recipe/mini_synth.tar).
# Exit status: 0 only if every run trained and its epoch times were read.
set -uo pipefail
OUT=${OUT:-/tmp/mini_synth_epochs}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO/egs2/mini_synth/asr1"
nj=$(nproc)
# Without the TTS engines stage 1 cannot synthesise the corpus: unpack the packed sets instead.
first=1
if ! { command -v espeak-ng && command -v flite && command -v sox &&
       python3 -c "import py_nanotts"; } > /dev/null 2>&1; then
    archive=$REPO/.gpu/recipe/mini_synth.tar
    python3 "$REPO/tools/gpu/pack_recipe_audio.py" unpack "$archive" || {
        echo "no TTS engines here and no usable $archive: make it where the corpus is" \
             "(tools/gpu/pack_recipe_audio.py pack) and copy it here"; exit 1; }
    first=2
fi
if ! ./run.sh --python python3 --nj "$nj" --stage "$first" --stop_stage 3 > "$OUT/recipe_prep.log" 2>&1; then
    echo "recipe stages $first-3 failed:"; tail -n 30 "$OUT/recipe_prep.log"; exit 1
fi
runs=() failed=()
# name, config, extra asr_train options: the Mamba configs also with the encoders' CUDA graphs
# (encoder_conf cuda_graphs: true, one line; ESPnet merges it into the config's encoder_conf).
while read -r name cfg extra; do
    [[ " ${RECIPE_RUNS:-$name} " == *" $name "* ]] || continue
    # shellcheck disable=SC2046  # RECIPE_MAX_EPOCH: fewer epochs than the configs' 6
    ./run.sh --python python3 --nj "$nj" --ngpu 1 --stage 4 --stop_stage 4 \
        $([[ -n ${RECIPE_MAX_EPOCH:-} ]] && echo --max_epoch "$RECIPE_MAX_EPOCH") \
        --asr_config "conf/tuning/$cfg.yaml" --asr_tag "gpu_$name" --asr_args "$extra" \
        > "$OUT/recipe_$name.log" 2>&1 < /dev/null
    rc=$?
    echo "$name: exit $rc"
    ((rc == 0)) || failed+=("$name")
    cp "exp/asr_gpu_$name/train.log" "$OUT/recipe_${name}.train.log" 2>/dev/null
    runs+=("$name=exp/asr_gpu_$name/train.log")
    python3 "$REPO/tools/gpu/recipe_epoch_times.py" "$OUT/recipe_gpu.json" "${runs[@]}" > /dev/null
done <<'RUNS'
conformer train_asr_conformer
samba_asr train_asr_samba_asr
samba_asr_graphed train_asr_samba_asr --encoder_conf cuda_graphs=true
speech_mamba train_asr_speech_mamba
speech_mamba_graphed train_asr_speech_mamba --encoder_conf cuda_graphs=true
RUNS
((${#runs[@]})) || failed+=("no run matches RECIPE_RUNS='${RECIPE_RUNS:-}'")
# the table of every run; exit 1 if a train.log has no epoch time
python3 "$REPO/tools/gpu/recipe_epoch_times.py" "$OUT/recipe_gpu.json" "${runs[@]}" ||
    failed+=("epoch times")
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (logs in $OUT)"
    exit 1
fi
