#!/usr/bin/env bash
# mini_synth: an offline ASR recipe on synthetic speech, end to end on a small CPU machine.
#
#   ./run.sh                                   # corpus, tokens, stats, train, decode, score, pack
#   ./run.sh --smoke true                      # tiny corpus, 1 epoch, every stage (CI)
#   ./run.sh --asr_config conf/tuning/train_asr_conformer.yaml --stage 2
#
# Stages (ESPnet's order; asr.sh's argument names where they exist):
#   1 data   local/make_corpus.py -> data/<set> (Kaldi dirs) -> dump/raw/<set>
#   2 tokens char and sentencepiece BPE token lists (espnet2.bin.tokenize_text, sentencepiece)
#   3 stats  espnet2.bin.asr_train --collect_stats true (nj jobs) + aggregate_stats_dirs
#   4 train  espnet2.bin.asr_train
#   5 decode espnet2.bin.asr_inference, nj jobs over all test sets
#   6 score  local/score.py: WER and CER per test set -> ${asr_exp}/RESULTS.md
#   7 pack   local/model_card.py -> ${asr_exp}/README.md; espnet2.bin.pack asr -> ${asr_exp}/*.zip
#   8 stream only with --streaming true (causal models): streaming_asr_inference in chunks of
#            --streaming_chunk samples over the test sets, scored as stage 6, with the real-time
#            factor -> ${asr_exp}/<streaming_tag>/RESULTS.md
# No path.sh/cmd.sh: everything runs locally with the project's Python (find_python in
# tools/asr_recipe.sh, which holds the stages after the corpus, shared with egs2/synth_speech).
# The body is one { ... } block: bash parses all of it before running, so editing this file
# while a run is going cannot derail that run.
{
set -euo pipefail
# the options block and the usage text are read from this file: keep its absolute path, since
# the cd below would break a relative one (bash egs2/mini_synth/asr1/run.sh from the repository)
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")"
RECIPE_DIR=$PWD
REPO_ROOT=$(cd ../../.. && pwd)

# ------------------------------------------------------------------------------ options
stage=1
stop_stage=100
smoke=false          # tiny corpus, 1 epoch, short long-context sets, small beam: for CI
nj=$(nproc 2>/dev/null || echo 2)  # parallel jobs (corpus, stats, decoding)
ngpu=0
nthreads=$(nproc 2>/dev/null || echo 2)  # torch threads of training (1 if other jobs share the cores)
seed=0
python=              # default: $VIRTUAL_ENV, ../../../.venv, or tools/find_python.sh
# corpus
n_train=2000
n_dev=150
n_test=300
long_durations=30,60,120   # seconds per long-context recording, one test set each
long_recordings=8,4,2      # recordings per long-context set
train_joined_seconds=      # also train on the training utterances joined per voice into recordings of about this many seconds
train_joined_share=        # with --train_joined_seconds: join only this share of each voice's utterances, keep the rest (the same audio)
# tokens
lang=en
token_type=char      # char or bpe
nbpe=100
bpemode=unigram
# training / decoding
asr_config=conf/train_asr.yaml
inference_config=conf/decode_asr.yaml
asr_tag=
asr_args=            # extra options for asr_train, e.g. "--max_epoch 1"
inference_args=      # extra options for asr_inference, e.g. "--beam_size 2"
max_epoch=           # shortcut for asr_args="--max_epoch N"
inference_asr_model=valid.acc.ave.pth
expdir=exp
dumpdir=dump
datadir=data
wavdir=corpus/wav
train_set=train
valid_set=dev
test_sets=           # default: test + one test_<N>s per long duration
# streaming (stage 8; a model trained with encoder_conf.bidirectional: false)
streaming=false      # true: stage 8 decodes the test sets as streams too
streaming_chunk=5120 # samples a chunk (5120 = 320 ms at 16 kHz)
streaming_args=      # extra options, e.g. "--endpoint_blank_seconds 0.8 --max_utterance_seconds 20"
streaming_tag=       # default: streaming<chunk>_<inference tag>, + _ep when streaming_args endpoints
# end of options

# stages 2-8, the option parser and the environment: shared with egs2/synth_speech/asr1
source "${REPO_ROOT}/tools/asr_recipe.sh"
recipe=egs2/mini_synth/asr1
parse_options "$@"

if [[ $smoke == true ]]; then
    n_train=40; n_dev=8; n_test=12
    long_durations=5,10,20; long_recordings=2,1,1
    max_epoch=${max_epoch:-1}
    inference_args="--beam_size 2 --maxlenratio 0.5 ${inference_args}"
    expdir=${expdir/#exp/exp_smoke}; dumpdir=${dumpdir/#dump/dump_smoke}
    datadir=${datadir/#data/data_smoke}; wavdir=${wavdir/#corpus/corpus_smoke}
fi
[[ -n $max_epoch ]] && asr_args="--max_epoch ${max_epoch} ${asr_args}"
if [[ -z $test_sets ]]; then
    test_sets=test
    for d in ${long_durations//,/ }; do test_sets+=" test_${d}s"; done
fi
resolve_names
setup_python

log "mini_synth asr1: stages ${stage}-${stop_stage}, config ${asr_config}, exp ${asr_exp}" \
    "$([[ $smoke == true ]] && echo '(smoke)')"
install_check
t_all=$SECONDS

# ------------------------------------------------------------------------------ 1: data
if stage_on 1; then
    stage_start 1 "corpus: synthesise ${n_train}/${n_dev}/${n_test} train/dev/test utterances" \
        "+ long-context sets (${long_durations} s) with ${nj} jobs"
    rm -rf "${datadir}" "${wavdir}"
    "$python" local/make_corpus.py --out_dir "${datadir}" --wav_dir "${wavdir}" \
        --n_train "$n_train" --n_dev "$n_dev" --n_test "$n_test" \
        --long_durations "$long_durations" --long_recordings "$long_recordings" \
        --seed "$seed" --nj "$nj"
    asr_dump_sets "${corpus_train_set}" "${valid_set}" ${test_sets}
    asr_join_train_set
    stage_end
fi

# ------------------------------------------------------------------------------ 2-8
asr_stages_after_corpus
finish
exit 0
}
