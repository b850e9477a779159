#!/usr/bin/env bash
# synth_speech: ASR on a synthetic English corpus sized in hours, from corpus to RESULTS.md.
#
#   ./run.sh                                     # 20 h corpus, Samba-ASR, one GPU if there is one
#   ./run.sh --asr_config conf/tuning/train_asr_conformer.yaml --stage 4
#   ./run.sh --smoke true                        # tiny corpus and model, 1 epoch, CPU (the test)
#
# Stages (ESPnet's order; asr.sh's argument names where they exist):
#   1 data   local/make_corpus.py -> data/<set> (Kaldi dirs, long sets) -> dump/raw/<set>
#   2 tokens char and sentencepiece BPE token lists (espnet2.bin.tokenize_text, sentencepiece)
#   3 stats  espnet2.bin.asr_train --collect_stats true (nj jobs) + aggregate_stats_dirs
#   4 train  espnet2.bin.asr_train (--ngpu)
#   5 decode espnet2.bin.asr_inference, nj jobs over all test sets
#   6 score  local/score.py: WER and CER per test set -> ${asr_exp}/RESULTS.md; the table over
#            every model of ${expdir} and the WER-vs-length plot -> ${expdir}/wer_vs_length.png
#   7 pack   local/model_card.py -> ${asr_exp}/README.md; espnet2.bin.pack asr -> ${asr_exp}/*.zip
#   8 stream only with --streaming true (causal models), as egs2/mini_synth/asr1
# Stages 2-8 are tools/asr_recipe.sh, shared with egs2/mini_synth/asr1.  Without TTS engines on
# the machine (a GPU machine without network), --tts_prefix names the bundle of
# tools/gpu/fetch_tts.sh (default: the repository's .gpu/tts when espeak-ng does not run).
{
set -euo pipefail
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")"
RECIPE_DIR=$PWD
REPO_ROOT=$(cd ../../.. && pwd)

# ------------------------------------------------------------------------------ options
stage=1
stop_stage=100
smoke=false          # tiny corpus (--hours 0.02), tiny model, 1 epoch, short long sets: CPU test
nj=$(nproc 2>/dev/null || echo 2)  # parallel jobs (corpus, stats, decoding)
ngpu=                # default: 1 if torch sees a GPU, else 0
nthreads=            # torch threads of training (default: every core without a GPU; 1 with one,
                     # as ESPnet's path.sh sets OMP_NUM_THREADS=1: the cores go to the data
                     # loaders and to the other configs' trainings and decodings beside it)
num_workers=         # data loader processes of training (default: 4 with a GPU, 0 without)
seed=0
python=              # default: $VIRTUAL_ENV, ../../../.venv, or tools/find_python.sh
# corpus (local/make_corpus.py)
hours=20             # hours of training speech
eval_frac=0.02       # hours of dev and of each test set, as a share of --hours
min_eval_utts=100    # utterances of dev and of each test set at least
unseen_engine=pico   # engine family kept out of training: pico or flite
long_durations=30,60,120,300,1200  # seconds per recording of the long sets test_long_<N>s
long_voices=1        # voices of test_long (each speaks max(long_durations) s)
train_joined_seconds= # also train on the training utterances joined per voice into recordings of about this many seconds
train_joined_share=   # with --train_joined_seconds: join only this share of each voice's utterances, keep the rest (the same audio)
wavdir=corpus/wav
tts_prefix=          # TTS engines brought along (tools/gpu/fetch_tts.sh): a folder or .tar.xz
# tokens
lang=en
token_type=char      # char or bpe (--nbpe units): characters begin to align in far fewer updates (README, Tokens)
nbpe=500
bpemode=unigram
# training / decoding
asr_config=conf/train_asr.yaml
inference_config=conf/decode_asr.yaml
asr_tag=
asr_args=            # extra options for asr_train, e.g. "--batch_bins 2000000"
inference_args=      # extra options for asr_inference, e.g. "--beam_size 4"
max_epoch=           # shortcut for asr_args="--max_epoch N"
inference_asr_model=valid.acc.ave.pth
decode_alone_seconds=600  # a recording at least this long is decoded in a job of its own
decode_batch_size=   # recordings per batch of asr_inference (ESPnet's batched beam search; default: 8 with a GPU, 1 without)
decode_batch_seconds=240  # audio per batch at most (recordings x the longest): long recordings go fewer at a time
expdir=exp
dumpdir=dump
datadir=data
train_set=train
valid_set=dev
test_sets=           # default: test test_unseen_voice test_unseen_engine test_long test_long_<N>s...
# streaming (stage 8; a model trained with encoder_conf.bidirectional: false)
streaming=false
streaming_chunk=5120
streaming_args=
streaming_tag=
# end of options

source "${REPO_ROOT}/tools/asr_recipe.sh"
recipe=egs2/synth_speech/asr1
usage_lines=2,20
parse_options "$@"

if [[ $smoke == true ]]; then
    hours=0.02; min_eval_utts=4; long_durations=10,40
    max_epoch=${max_epoch:-1}
    # a tiny model of the same config (every config here takes these three options)
    asr_args="--encoder_conf output_size=64 --encoder_conf num_blocks=1 --decoder_conf num_blocks=1 --batch_bins 1000000 ${asr_args}"
    inference_args="--beam_size 2 --maxlenratio 0.3 ${inference_args}"
    nbpe=${nbpe/#500/60}
    expdir=${expdir/#exp/exp_smoke}; dumpdir=${dumpdir/#dump/dump_smoke}
    datadir=${datadir/#data/data_smoke}; wavdir=${wavdir/#corpus/corpus_smoke}
fi
[[ -n $max_epoch ]] && asr_args="--max_epoch ${max_epoch} ${asr_args}"
long_sets=
for d in ${long_durations//,/ }; do long_sets+=" test_long_${d}s"; done
if [[ -z $test_sets ]]; then
    test_sets="test test_unseen_voice test_unseen_engine"
    [[ -n $long_sets ]] && test_sets+=" test_long${long_sets}"
fi
# decoding: every test set in one list split over nj jobs, so that each job loads ESPnet and
# the model once (tools/asr_recipe.sh, decode_union)
decode_union=true
# the plot: error rate against recording length over test_long and its cuts
plot_sets="test_long.*"; plot_title="synth_speech: error rate vs recording length"
resolve_names
setup_python

# TTS engines from a bundle, where the machine has none
if [[ -z $tts_prefix ]] && ! espeak-ng --version >/dev/null 2>&1; then
    for f in "${REPO_ROOT}/.gpu/tts/tts_prefix.tar.xz" "${REPO_ROOT}/.gpu/tts/prefix"; do
        [[ -e $f ]] && { tts_prefix=$f; break; }
    done
fi
if [[ -n $tts_prefix ]] && stage_on 1; then
    # the engines' PATH, LD_LIBRARY_PATH, ESPEAK_DATA_PATH and py-nanotts for this shell
    tts_env=$("$python" "${REPO_ROOT}/tools/tts_corpus.py" --prefix_env "$tts_prefix") \
        || die "cannot use the TTS bundle --tts_prefix ${tts_prefix} (above)"
    eval "$tts_env"
fi
if [[ -z $ngpu ]]; then
    ngpu=$("$python" -c 'import torch; print(min(torch.cuda.device_count(), 1))' 2>/dev/null || echo 0)
fi
[[ -n $num_workers ]] || num_workers=$([[ $ngpu -gt 0 ]] && echo 4 || echo 0)
[[ -n $nthreads ]] || nthreads=$([[ $ngpu -gt 0 ]] && echo 1 || nproc 2>/dev/null || echo 2)
[[ $nthreads =~ ^[1-9][0-9]*$ ]] || die "--nthreads ${nthreads}: a number of threads, 1 or more"
[[ -n $decode_batch_size ]] || decode_batch_size=$([[ $ngpu -gt 0 ]] && echo 8 || echo 1)
[[ $decode_batch_size =~ ^[1-9][0-9]*$ ]] || die "--decode_batch_size ${decode_batch_size}: a number of recordings, 1 or more"
[[ $decode_batch_seconds =~ ^[0-9]+([.][0-9]*)?$ && ! $decode_batch_seconds =~ ^0*([.]0*)?$ ]] \
    || die "--decode_batch_seconds ${decode_batch_seconds}: a number of seconds above 0"
# amp (bf16 autocast on GPUs that have it) is for GPUs; on a CPU it would only warn
[[ $ngpu -gt 0 ]] || asr_args="--use_amp false ${asr_args}"

log "synth_speech asr1: stages ${stage}-${stop_stage}, config ${asr_config}, exp ${asr_exp}," \
    "ngpu ${ngpu} $([[ $smoke == true ]] && echo '(smoke)')"
wordnet_check() {  # the sentence lists are made from WordNet on the first run
    [[ -s ${datadir}/local/text/stats.json || -e /usr/share/wordnet/data.noun \
        || -n ${SYNTH_SPEECH_TEXT_DIR:-} ]] || missing+=("wordnet-base")
}
install_check wordnet_check
t_all=$SECONDS

# ------------------------------------------------------------------------------ 1: data
if stage_on 1; then
    stage_start 1 "corpus: ${hours} h of training speech, dev and test sets, long sets" \
        "(${long_durations} s) with ${nj} jobs"
    text_opts=()
    [[ -n ${SYNTH_SPEECH_TEXT_DIR:-} ]] && text_opts=(--text_dir "$SYNTH_SPEECH_TEXT_DIR")
    # the wavs are kept: a second run remakes only what is missing (make_corpus.py refuses a
    # wav dir planned with other options); the data dirs are written anew
    "$python" local/make_corpus.py --hours "$hours" --eval_frac "$eval_frac" \
        --min_eval_utts "$min_eval_utts" --unseen_engine "$unseen_engine" \
        --long_durations "$long_durations" --long_voices "$long_voices" \
        --out_dir "${datadir}" --wav_dir "${wavdir}" --seed "$seed" --nj "$nj" "${text_opts[@]}"
    asr_dump_sets "${corpus_train_set}" "${valid_set}" ${test_sets}
    asr_join_train_set
    stage_end
fi

# ------------------------------------------------------------------------------ 2-8
asr_stages_after_corpus
finish
exit 0
}
