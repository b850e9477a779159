#!/usr/bin/env bash
# LibriSpeech 960 h with espnet-mamba's models, run like ESPnet's own egs2/librispeech/asr1:
#   ./run.sh --espnet_root /path/to/espnet [asr.sh options, e.g. --stage 11 --ngpu 4]
# (or export ESPNET_ROOT).  Sets, BPE size, speed perturbation and LM follow ESPnet's recipe;
# the model is conf/train_asr.yaml (Speech-Mamba, published size).  See README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=../../espnet_root.sh
. ../../espnet_root.sh
espnet_mamba_setup librispeech "$@"

train_set="train_960"
valid_set="dev"
test_sets="test_clean test_other dev_clean dev_other"

asr_config=conf/train_asr.yaml
inference_config=conf/decode_asr.yaml
lm_config=conf/train_lm.yaml

./asr.sh \
    --lang en \
    --ngpu 4 \
    --nbpe 5000 \
    --feats_type raw \
    --audio_format flac.ark \
    --max_wav_duration 30 \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --use_lm true \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --lm_config "${lm_config}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --lm_train_text "data/${train_set}/text data/local/other_text/text" \
    --bpe_train_text "data/${train_set}/text" \
    "${asr_args[@]}"
