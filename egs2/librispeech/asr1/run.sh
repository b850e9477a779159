#!/usr/bin/env bash
# LibriSpeech 960 h with espnet-mamba's models, through ESPnet's own asr.sh:
#   ./run.sh --espnet_root /path/to/espnet [--librispeech DIR] [asr.sh options]
# (or export ESPNET_ROOT; DIR defaults to LIBRISPEECH of db.sh).  Sets, BPE size, speed
# perturbation and LM follow ESPnet's recipe; the model is conf/train_asr.yaml (Speech-Mamba,
# published size).  Data preparation is ours (local/data.sh): the corpus parts on disk, nothing
# downloaded.  Stage 14 packs the model.  See README.md.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=../../espnet_root.sh
. ../../espnet_root.sh
espnet_mamba_setup --own_local "$@"

train_set="train_960"
valid_set="dev"
# sets test_sets (the test/dev parts on disk), local_data_opts, lm_text
. local/run_options.sh
librispeech_run_options "${train_set}" train-clean-100,train-clean-360,train-other-500 \
    "${caller_dir}"

asr_config=conf/train_asr.yaml
inference_config=conf/decode_asr.yaml
lm_config=conf/train_lm.yaml

espnet_mamba_asr \
    --lang en \
    --ngpu 4 \
    --nbpe 5000 \
    --feats_type raw \
    --audio_format flac.ark \
    --max_wav_duration 30 \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --use_lm true \
    --skip_packing false \
    --local_data_opts "${local_data_opts}" \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --lm_config "${lm_config}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --lm_train_text "data/${train_set}/text${lm_text:+ ${lm_text}}" \
    --bpe_train_text "data/${train_set}/text" \
    "${asr_args[@]}"
