#!/usr/bin/env bash
# The mini recipe (egs2/mini_synth/asr1) trained on one GPU through the stock
# `asr_train --ngpu 1` (issue 6): seconds per epoch of the Conformer baseline and of the two Mamba
# configs, same data, batches and epochs.  Run on the device after tools/gpu/session.sh set it up
# (step `recipe` of tools/gpu/plan_issue6_7.sh).  Writes $OUT/recipe_gpu.json, the runs' logs and
# train.logs.  Stages 1-3 (corpus, tokens, stats) run once on the CPU cores; stage 1 is replaced by
# the carried sets where no TTS engine is installed (the lent GPU machine).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO/egs2/mini_synth/asr1"
nj=$(nproc)
# The GPU machine has no TTS engines for stage 1: the train and dev sets come carried in
# .gpu/recipe/mini_synth.tar (tools/gpu/pack_recipe_audio.py; carry ".gpu/recipe").
first=1
if ! { command -v espeak-ng && command -v flite && command -v sox &&
       python3 -c "import py_nanotts"; } > /dev/null 2>&1; then
    archive=$REPO/.gpu/recipe/mini_synth.tar
    python3 "$REPO/tools/gpu/pack_recipe_audio.py" unpack "$archive" || {
        echo "no TTS engines here and no usable $archive: make it where the corpus is" \
             "(tools/gpu/pack_recipe_audio.py pack) and carry .gpu/recipe"; exit 1; }
    first=2
fi
if ! ./run.sh --python python3 --nj "$nj" --stage "$first" --stop_stage 3 > "$OUT/recipe_prep.log" 2>&1; then
    echo "recipe stages $first-3 failed:"; tail -n 30 "$OUT/recipe_prep.log"; exit 1
fi
runs=()
# name, config, extra asr_train options: the Mamba configs also with the encoders' CUDA graphs
# (encoder_conf cuda_graphs: true, one line; ESPnet merges it into the config's encoder_conf).
# RECIPE_RUNS picks some of them by name (default: all), RECIPE_MAX_EPOCH cuts the epochs; the JSON is rewritten after each run,
# so a machine taken back mid-way keeps the finished ones.
while read -r name cfg extra; do
    [[ " ${RECIPE_RUNS:-$name} " == *" $name "* ]] || continue
    # shellcheck disable=SC2046  # RECIPE_MAX_EPOCH: fewer epochs than the configs' 6
    ./run.sh --python python3 --nj "$nj" --ngpu 1 --stage 4 --stop_stage 4 \
        $([[ -n ${RECIPE_MAX_EPOCH:-} ]] && echo --max_epoch "$RECIPE_MAX_EPOCH") \
        --asr_config "conf/tuning/$cfg.yaml" --asr_tag "gpu_$name" --asr_args "$extra" \
        > "$OUT/recipe_$name.log" 2>&1 < /dev/null
    echo "$name: exit $?"
    cp "exp/asr_gpu_$name/train.log" "$OUT/recipe_${name}.train.log" 2>/dev/null
    runs+=("$name=exp/asr_gpu_$name/train.log")
    python3 "$REPO/tools/gpu/recipe_epoch_times.py" "$OUT/recipe_gpu.json" "${runs[@]}"
done <<'RUNS'
conformer train_asr_conformer
samba_asr train_asr_samba_asr
samba_asr_graphed train_asr_samba_asr --encoder_conf cuda_graphs=true
speech_mamba train_asr_speech_mamba
speech_mamba_graphed train_asr_speech_mamba --encoder_conf cuda_graphs=true
RUNS
