#!/usr/bin/env bash
# LibriSpeech 100 h (train-clean-100) with espnet-mamba's models, through ESPnet's own asr.sh:
#   ./run.sh --espnet_root /path/to/espnet [--librispeech DIR] [asr.sh options]
# (or export ESPNET_ROOT; DIR defaults to LIBRISPEECH of db.sh).  Options follow ESPnet's
# egs2/librispeech_100/asr1 (BPE 5000, speed perturbation, no LM); the model is
# conf/train_asr.yaml.  Data preparation is ours (local/, shared with ../../librispeech/asr1):
# the corpus parts on disk, nothing downloaded.  Stage 14 packs the model.  See README.md.
set -euo pipefail
caller_dir=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=../../espnet_root.sh
. ../../espnet_root.sh
espnet_mamba_setup --own_local "$@"

train_set="train_clean_100"
valid_set="dev"
# sets test_sets (the test/dev parts on disk), local_data_opts, lm_text (unused: no LM)
. local/run_options.sh
librispeech_run_options "${train_set}" train-clean-100 "${caller_dir}"

asr_config=conf/train_asr.yaml
inference_config=conf/decode_asr.yaml

espnet_mamba_asr \
    --lang en \
    --ngpu 1 \
    --nj 16 \
    --gpu_inference true \
    --inference_nj 2 \
    --nbpe 5000 \
    --max_wav_duration 30 \
    --speed_perturb_factors "0.9 1.0 1.1" \
    --audio_format "flac.ark" \
    --feats_type raw \
    --use_lm false \
    --skip_packing false \
    --local_data_opts "${local_data_opts}" \
    --asr_config "${asr_config}" \
    --inference_config "${inference_config}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --lm_train_text "data/${train_set}/text" \
    --bpe_train_text "data/${train_set}/text" \
    "${asr_args[@]}"
