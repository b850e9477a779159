#!/usr/bin/env bash
# Stage 1 of asr.sh for LibriSpeech: Kaldi data directories from the corpus parts on disk.
# Nothing is downloaded; absent parts are skipped and named.
#   local/data.sh [--librispeech DIR] [--train_set train_960]
#                 [--train_parts train-clean-100,train-clean-360,train-other-500]
# DIR: default LIBRISPEECH of db.sh; the parts are in DIR/LibriSpeech/<part> (or DIR/<part>).
# Makes data/<part> for each train part, dev-clean, dev-other, test-clean, test-other present
# (e.g. data/dev_clean), data/<train_set> from the train parts present and data/dev from the
# dev parts present.  LM text: if data/local/other_text/librispeech-lm-norm.txt.gz is there
# (put it there yourself), data/local/other_text/text is made from it.
set -euo pipefail
log() {
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}) $*"
}

librispeech=
train_set=train_960
train_parts=train-clean-100,train-clean-360,train-other-500
dev_parts=dev-clean,dev-other
test_parts=test-clean,test-other

log "$0 $*"
. utils/parse_options.sh
if [ $# -ne 0 ]; then
    log "error: unexpected arguments: $* (options: --librispeech DIR --train_set NAME" \
        "--train_parts PART,PART)"
    exit 2
fi
. ./db.sh
. ./path.sh
. local/librispeech_dir.sh

root=${librispeech:-${LIBRISPEECH:-}}
if [ -z "${root}" ]; then
    log "error: where is LibriSpeech? Pass ./run.sh --librispeech DIR or set LIBRISPEECH in db.sh"
    exit 1
fi
corpus=$(librispeech_dir "${root}")
log "LibriSpeech parts from ${corpus}"

python3 local/prepare_librispeech.py --corpus "${corpus}" --out data \
    --parts "${train_parts},${dev_parts},${test_parts}" \
    --combine "${train_set}=${train_parts}" --combine "dev=${dev_parts}"

# Kaldi's own check of what was written (sorting, matching ids)
for part in $(echo ${train_parts//,/ } ${dev_parts//,/ } ${test_parts//,/ } "${train_set}" dev \
              | tr ' ' '\n' | sort -u); do
    dir=data/${part//-/_}
    [ -f "${dir}/wav.scp" ] || continue
    utils/validate_data_dir.sh --no-feats "${dir}" >/dev/null
done

other=data/local/other_text
if [ -f "${other}/librispeech-lm-norm.txt.gz" ]; then
    if [ ! -s "${other}/text" ] || [ "${other}/librispeech-lm-norm.txt.gz" -nt "${other}/text" ]; then
        log "LM text: ${other}/text from ${other}/librispeech-lm-norm.txt.gz"
        # one utterance id per line, as asr.sh's text files have
        zcat "${other}/librispeech-lm-norm.txt.gz" \
            | awk '{ printf("librispeech_lm_%08d %s\n", NR, $0) }' >"${other}/text.tmp"
        mv "${other}/text.tmp" "${other}/text"
    fi
else
    log "LM text: no ${other}/librispeech-lm-norm.txt.gz; an LM (if --use_lm true) is trained" \
        "on data/${train_set}/text"
fi
log "done"
