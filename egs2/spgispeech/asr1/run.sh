#!/usr/bin/env bash
# SPGISpeech (5k h) with espnet-mamba's models, run like ESPnet's own egs2/spgispeech/asr1:
#   ./run.sh --espnet_root /path/to/espnet [asr.sh options, e.g. --stage 11 --ngpu 4]
# (or export ESPNET_ROOT).  Sets, BPE size, no speed perturbation and the LSTM LM follow ESPnet's
# recipe; the model is conf/train_asr.yaml.  See README.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=../../espnet_root.sh
. ../../espnet_root.sh
espnet_mamba_setup spgispeech "$@"

# Normalised text (the SPGISpeech/Open-ASR convention the papers' and ESPnet's 2.2/2.3 numbers
# use).  ESPnet's recipe defaults to unnormalised text: set norm="_unnorm" for that.
norm=""
train_set=train_nodev${norm}
valid_set=dev_4k${norm}
test_sets="dev_4k${norm} val${norm}"

asr_config=conf/train_asr.yaml
inference_config=conf/decode_asr.yaml
lm_config=conf/train_lm.yaml

# speed perturbation: none, as upstream
speed_perturb_factors=""

./asr.sh \
    --lang "en${norm}" \
    --ngpu 4 \
    --nj 128 \
    --inference_nj 256 \
    --dumpdir "dump${norm}" \
    --expdir "exp${norm}" \
    --token_type bpe \
    --nbpe 5000 \
    --feats_type raw \
    --audio_format flac \
    --max_wav_duration 20 \
    --speed_perturb_factors "${speed_perturb_factors}" \
    --use_lm true \
    --skip_packing false \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --lm_config "${lm_config}" \
    --score_opts "-s" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --lm_train_text "data/${train_set}/text" \
    --bpe_train_text "data/${train_set}/text" \
    "${asr_args[@]}"
