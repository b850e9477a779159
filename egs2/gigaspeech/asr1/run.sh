#!/usr/bin/env bash
# GigaSpeech (XL, 10k h) with espnet-mamba's models, run like ESPnet's own egs2/gigaspeech/asr1:
#   ./run.sh --espnet_root /path/to/espnet [asr.sh options, e.g. --stage 11 --ngpu 4]
# (or export ESPNET_ROOT).  Sets, BPE size, no speed perturbation, no LM and the official
# scoring (local/score.sh) follow ESPnet's recipe; the model is conf/train_asr.yaml.  See README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=../../espnet_root.sh
. ../../espnet_root.sh
espnet_mamba_setup gigaspeech "$@"

train_set="train"
valid_set="dev"
test_sets="dev test"

asr_config=conf/train_asr.yaml
inference_config=conf/decode_asr.yaml
lm_config=conf/train_lm.yaml

# speed perturbation: none, as upstream (train_set becomes "${train_set}_sp" if set)
speed_perturb_factors=""

# NOTE: local/score.sh (the GigaSpeech official scoring) gets the default inference config;
# when you pass another --inference_config, pass a matching --local_score_opts too.
./asr.sh \
    --lang en \
    --ngpu 4 \
    --nj 64 \
    --gpu_inference true \
    --inference_nj 4 \
    --nbpe 5000 \
    --feats_type raw \
    --audio_format flac.ark \
    --max_wav_duration 30 \
    --speed_perturb_factors "${speed_perturb_factors}" \
    --use_lm false \
    --skip_packing false \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --lm_config "${lm_config}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --lm_train_text "data/${train_set}/text" \
    --bpe_train_text "data/${train_set}/text" \
    --local_score_opts "--inference_config ${inference_config} --use_lm false" \
    "${asr_args[@]}"
