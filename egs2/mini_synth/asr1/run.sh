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
# No path.sh/cmd.sh: everything runs locally with the project's Python (see find_python below).
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

log() { echo -e "[$(date '+%H:%M:%S')] $*" >&2; }
die() { echo -e "ERROR: $*" >&2; exit 1; }

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

options_block() { sed -n '/^# -* options$/,/^# end of options$/p' "$SELF" | grep -E '^[a-z_]+='; }
usage() {
    sed -n '2,20p' "$SELF" | sed 's/^# \{0,1\}//'
    echo; echo "Options (default):"
    options_block | sed -E 's/^([a-z_]+)=(.*)/  --\1 \2/'
}
known_options=" $(options_block | cut -d= -f1 | tr '\n' ' ') "
while [[ $# -gt 0 ]]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --*=*) k=${1%%=*}; k=${k#--}; v=${1#*=}; shift ;;
        --*) [[ $# -ge 2 ]] || die "option $1 needs a value"; k=${1#--}; v=$2; shift 2 ;;
        *) die "unexpected argument '$1' (options are --name value; --help lists them)" ;;
    esac
    [[ $known_options == *" $k "* ]] || die "unknown option --$k (--help lists them)"
    printf -v "$k" '%s' "$v"
done

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
case $token_type in
    char) token_dir=${datadir}/${lang}_token_list/char; bpemodel= ;;
    bpe) token_dir=${datadir}/${lang}_token_list/bpe_${bpemode}${nbpe}
         bpemodel=${token_dir}/bpe.model ;;
    *) die "--token_type must be char or bpe (got '$token_type')" ;;
esac
token_list=${token_dir}/tokens.txt
tok_suffix=${token_type}; [[ $token_type == bpe ]] && tok_suffix+=${nbpe}
[[ -n $asr_tag ]] || asr_tag="$(basename "${asr_config}" .yaml)_raw_${lang}_${tok_suffix}"
asr_exp=${expdir}/asr_${asr_tag}
asr_stats_dir=${expdir}/asr_stats_raw_${lang}_${tok_suffix}
inference_tag="$(basename "${inference_config}" .yaml)_asr_model_${inference_asr_model%.pth}"
if [[ -z $streaming_tag ]]; then
    streaming_tag=streaming${streaming_chunk}_${inference_tag}
    [[ $streaming_args == *endpoint* || $streaming_args == *max_utterance* ]] && streaming_tag+=_ep
fi

# ------------------------------------------------------------------------------ environment
find_python() {
    if [[ -n $python ]]; then echo "$python"; return; fi
    if [[ -n ${VIRTUAL_ENV:-} && -x ${VIRTUAL_ENV}/bin/python ]]; then
        echo "${VIRTUAL_ENV}/bin/python"; return; fi
    if [[ -x ${REPO_ROOT}/.venv/bin/python ]]; then echo "${REPO_ROOT}/.venv/bin/python"; return; fi
    bash "${REPO_ROOT}/tools/find_python.sh"
}
python=$(find_python) || die "no Python found: run 'bash tools/setup_env.sh' in ${REPO_ROOT}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
unset ESPNET_MAMBA_DISABLE_HOOK

stage_on() { [[ $stage -le $1 && $stop_stage -ge $1 ]]; }
declare -A stage_time=()
stage_start() { log "=== stage $1: $2"; t_stage=$SECONDS; cur_stage=$1; }
stage_end() { stage_time[$cur_stage]=$((SECONDS - t_stage)); log "=== stage $cur_stage done in ${stage_time[$cur_stage]} s"; }

install_check() {
    local t0=$SECONDS missing=()
    "$python" - <<'EOF' || die "the Python at '$python' lacks what the recipe needs (above);\n  run 'bash tools/setup_env.sh' (Python env) and 'bash tools/install_recipe_deps.sh' (TTS) in ${REPO_ROOT}"
import importlib.util, sys
need = ["torch", "espnet2", "espnet_mamba", "sentencepiece", "soundfile", "editdistance", "yaml"]
if sys.version_info < (3, 12):
    sys.exit(f"Python {sys.version.split()[0]} is too old: ESPnet 202611 needs >= 3.12")
miss = [m for m in need if importlib.util.find_spec(m) is None]
if miss:
    sys.exit("missing Python packages: " + ", ".join(miss))
EOF
    if stage_on 1; then
        for b in espeak-ng flite sox; do command -v $b >/dev/null || missing+=("$b"); done
        "$python" -c "import py_nanotts" 2>/dev/null || missing+=("py-nanotts (pip)")
        [[ ${#missing[@]} -eq 0 ]] || die "missing ${missing[*]} (needed to synthesise the" \
            "corpus): run 'bash tools/install_recipe_deps.sh' in ${REPO_ROOT}"
    fi
    log "install check: $("$python" --version) at $python, tools ok ($((SECONDS - t0)) s)"
}

# run CMD... in the background with its output in LOG; print the lines matching PATTERN as they
# come (progress); fail with the log's tail if it fails.
run_logged() {
    local logf=$1 pattern=$2; shift 2
    mkdir -p "$(dirname "$logf")"
    echo "# $*" > "$logf"
    "$@" >> "$logf" 2>&1 &
    local pid=$! seen=0 n rc
    while kill -0 $pid 2>/dev/null; do
        sleep 2
        n=$(wc -l < "$logf")
        if [[ $n -gt $seen ]]; then
            sed -n "$((seen + 1)),${n}p" "$logf" | grep -E "$pattern" | progress_filter >&2 || true
            seen=$n
        fi
    done
    wait $pid && rc=0 || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 40 "$logf" >&2
        die "command failed (rc=$rc), log: $logf"
    fi
}

# ESPnet's long log lines -> short progress lines (epoch, batches, loss, acc, CER, time)
progress_filter() {
    awk 'function v(str, key) { if (match(str, "(^|[ ,])" key "=[^,]+")) {
             x = substr(str, RSTART, RLENGTH); sub(/^[ ,]/, "", x); return x } return "" }
         { i = index($0, "INFO: "); s = (i ? substr($0, i + 6) : $0) }
         s ~ /epoch results/ { split(s, a, "\\[valid\\]");
             printf "  %s: train %s %s | valid %s %s %s %s | %s\n", substr(s, 1, index(s, " ") - 1),
                 v(a[1], "loss"), v(a[1], "acc"), v(a[2], "loss"), v(a[2], "acc"),
                 v(a[2], "cer_ctc"), v(a[2], "cer"), v(a[1], "time"); next }
         s ~ /batch:/ { printf "  %s %s %s %s\n", substr(s, 1, index(s, ": ") - 1), v(s, "loss"),
                 v(s, "acc"), v(s, "train_time"); next }
         { print "  " substr(s, 1, 160) }'
}

# split a key list (first column of a file) into N parts balanced by utt2dur
decode_jobs() {  # decode_jobs TAG: a fresh ${asr_exp}/TAG/<set>/logdir per test set, its keys
    # split for --nj jobs (split_keys); the jobs, as "set:index", in the array tasks
    local dset ddir k i
    tasks=()
    for dset in ${test_sets}; do
        ddir=${asr_exp}/$1/${dset}
        rm -rf "$ddir"; mkdir -p "$ddir/logdir"
        k=$(split_keys "${dumpdir}/raw/${dset}" "$nj" "$ddir/logdir/keys")
        for i in $(seq 1 "$k"); do tasks+=("$dset:$i"); done
    done
}

collect_1best() {  # collect_1best DIR: the decoding jobs' 1-best text, token and score, sorted
    local f
    for f in text token score; do
        cat "$1"/logdir/output.*/1best_recog/$f 2>/dev/null | sort > "$1/$f" || true
    done
}

split_keys() {  # split_keys SRC_DIR N OUT_PREFIX  -> OUT_PREFIX.1 .. OUT_PREFIX.N (non-empty only)
    "$python" - "$@" <<'EOF'
import sys
src, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
keys = [l.split()[0] for l in open(f"{src}/wav.scp") if l.strip()]
dur = {}
try:
    dur = {l.split()[0]: float(l.split()[1]) for l in open(f"{src}/utt2dur") if l.strip()}
except FileNotFoundError:
    pass
bins = [[0.0, []] for _ in range(min(n, len(keys)))]
for k in sorted(keys, key=lambda k: -dur.get(k, 1.0)):  # longest first into the lightest bin
    b = min(bins, key=lambda b: b[0])
    b[0] += dur.get(k, 1.0)
    b[1].append(k)
for i, (_, ks) in enumerate(bins, 1):
    with open(f"{out}.{i}", "w") as f:
        f.writelines(k + "\n" for k in sorted(ks))
print(len(bins))
EOF
}

token_args() {
    echo --token_type "$token_type" --token_list "$token_list"
    [[ -n $bpemodel ]] && echo --bpemodel "$bpemodel"
    return 0
}

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
    for dset in "${train_set}" "${valid_set}" ${test_sets}; do
        [[ -s ${datadir}/${dset}/wav.scp ]] || die "${datadir}/${dset} was not made"
        rm -rf "${dumpdir}/raw/${dset}"; mkdir -p "${dumpdir}/raw/${dset}"
        cp "${datadir}/${dset}"/{wav.scp,text,utt2spk,spk2utt,utt2dur} "${dumpdir}/raw/${dset}/"
        echo raw > "${dumpdir}/raw/${dset}/feats_type"
    done
    stage_end
fi

# ------------------------------------------------------------------------------ 2: tokens
if stage_on 2; then
    stage_start 2 "token lists (char, bpe ${bpemode}${nbpe}) from ${dumpdir}/raw/${train_set}/text"
    srctexts=${datadir}/${lang}_token_list/train_text.txt
    mkdir -p "${datadir}/${lang}_token_list/char"
    cut -d' ' -f2- "${dumpdir}/raw/${train_set}/text" > "$srctexts"
    "$python" -m espnet2.bin.tokenize_text --token_type char --input "$srctexts" \
        --output "${datadir}/${lang}_token_list/char/tokens.txt" --field 1- --cleaner none \
        --write_vocabulary true --add_symbol '<blank>:0' --add_symbol '<unk>:1' \
        --add_symbol '<sos/eos>:-1' 2> "${datadir}/${lang}_token_list/char/tokenize.log" \
        || { tail "${datadir}/${lang}_token_list/char/tokenize.log"; die "tokenize_text (char) failed"; }
    bdir=${datadir}/${lang}_token_list/bpe_${bpemode}${nbpe}
    mkdir -p "$bdir"
    "$python" - "$srctexts" "$bdir/bpe" "$nbpe" "$bpemode" <<'EOF' > "$bdir/spm_train.log" 2>&1 \
        || { tail "$bdir/spm_train.log"; die "sentencepiece training failed"; }
import sys, sentencepiece as spm
src, prefix, n, mode = sys.argv[1:5]
spm.SentencePieceTrainer.train(input=src, model_prefix=prefix, vocab_size=int(n), model_type=mode,
                               character_coverage=1.0, input_sentence_size=100000000)
EOF
    "$python" -m espnet2.bin.tokenize_text --token_type bpe --bpemodel "$bdir/bpe.model" \
        --input "$srctexts" --output "$bdir/tokens.txt" --field 1- --cleaner none \
        --write_vocabulary true --add_symbol '<blank>:0' --add_symbol '<unk>:1' \
        --add_symbol '<sos/eos>:-1' 2> "$bdir/tokenize.log" \
        || { tail "$bdir/tokenize.log"; die "tokenize_text (bpe) failed"; }
    log "char: $(wc -l < "${datadir}/${lang}_token_list/char/tokens.txt") tokens," \
        "bpe: $(wc -l < "$bdir/tokens.txt") tokens"
    stage_end
fi
[[ $stage -gt 2 || $stop_stage -lt 2 ]] && [[ ! -s $token_list ]] && [[ $stage -le 7 ]] && \
    [[ $stop_stage -ge 3 ]] && die "no token list ${token_list}: run stage 2 first"

data_args() {  # data_args SPLIT_PREFIX DSET  (train|valid)
    echo --"$1"_data_path_and_name_and_type "${dumpdir}/raw/$2/wav.scp,speech,sound" \
         --"$1"_data_path_and_name_and_type "${dumpdir}/raw/$2/text,text,text"
}

# ------------------------------------------------------------------------------ 3: stats
if stage_on 3; then
    stage_start 3 "feature statistics (asr_train --collect_stats true, ${nj} jobs)"
    logdir=${asr_stats_dir}/logdir
    rm -rf "${asr_stats_dir}"; mkdir -p "$logdir"
    ntr=$(split_keys "${dumpdir}/raw/${train_set}" "$nj" "$logdir/train.scp")
    nva=$(split_keys "${dumpdir}/raw/${valid_set}" "$nj" "$logdir/valid.scp")
    n=$(( ntr < nva ? ntr : nva ))
    pids=()
    for i in $(seq 1 "$n"); do
        [[ $i -eq $n ]] && { for j in $(seq $((n + 1)) "$ntr"); do cat "$logdir/train.scp.$j" >> "$logdir/train.scp.$n"; done
                             for j in $(seq $((n + 1)) "$nva"); do cat "$logdir/valid.scp.$j" >> "$logdir/valid.scp.$n"; done; }
        "$python" -m espnet2.bin.asr_train --collect_stats true --config "$asr_config" \
            --use_preprocessor true $(token_args) --ngpu 0 --num_workers 0 \
            --use_tensorboard false --use_matplotlib false \
            $(data_args train "${train_set}") $(data_args valid "${valid_set}") \
            --train_shape_file "$logdir/train.scp.$i" --valid_shape_file "$logdir/valid.scp.$i" \
            --batch_type unsorted --batch_size 8 \
            --output_dir "$logdir/stats.$i" > "$logdir/stats.$i.log" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { tail -n 30 "$logdir/stats.$((i + 1)).log" >&2; die "collect_stats job $((i + 1)) failed, log: $logdir/stats.$((i + 1)).log"; }
    done
    "$python" -m espnet2.bin.aggregate_stats_dirs $(for i in $(seq 1 "$n"); do echo --input_dir "$logdir/stats.$i"; done) \
        --output_dir "${asr_stats_dir}" > "$logdir/aggregate.log" 2>&1 \
        || { tail "$logdir/aggregate.log"; die "aggregate_stats_dirs failed"; }
    [[ -s ${asr_stats_dir}/train/feats_stats.npz ]] || die "no ${asr_stats_dir}/train/feats_stats.npz"
    stage_end
fi

# ------------------------------------------------------------------------------ 4: train
if stage_on 4; then
    stage_start 4 "training ${asr_exp} (${asr_config}, ${nthreads} threads${asr_args:+, $asr_args})"
    [[ -s ${asr_stats_dir}/train/feats_stats.npz ]] || die "no stats in ${asr_stats_dir}: run stage 3"
    mkdir -p "${asr_exp}"
    OMP_NUM_THREADS=$nthreads MKL_NUM_THREADS=$nthreads run_logged "${asr_exp}/train.log" \
        'epoch results|[0-9]+epoch:train:[0-9]+-[0-9]+batch|Total Number of model parameters|The training was finished|Averaging|Traceback|Error' \
        "$python" -m espnet2.bin.asr_train --config "$asr_config" --use_preprocessor true \
        $(token_args) --ngpu "$ngpu" --num_workers 0 --seed "$seed" \
        --use_tensorboard false --use_matplotlib false \
        --normalize global_mvn --normalize_conf "stats_file=${asr_stats_dir}/train/feats_stats.npz" \
        $(data_args train "${train_set}") $(data_args valid "${valid_set}") \
        --train_shape_file "${asr_stats_dir}/train/speech_shape" \
        --train_shape_file "${asr_stats_dir}/train/text_shape" \
        --valid_shape_file "${asr_stats_dir}/valid/speech_shape" \
        --valid_shape_file "${asr_stats_dir}/valid/text_shape" \
        --fold_length 80000 --fold_length 150 \
        --output_dir "${asr_exp}" ${asr_args}
    [[ -e ${asr_exp}/${inference_asr_model} ]] || die "training left no ${asr_exp}/${inference_asr_model}"
    stage_end
fi

# ------------------------------------------------------------------------------ 5: decode
if stage_on 5; then
    stage_start 5 "decoding ${test_sets} with ${inference_config} (${nj} jobs)"
    [[ -e ${asr_exp}/${inference_asr_model} ]] || die "no ${asr_exp}/${inference_asr_model}: run stage 4"
    decode_jobs "${inference_tag}"
    running=0; done_n=0; failed=
    for t in "${tasks[@]}"; do
        IFS=: read -r dset i <<< "$t"
        ddir=${asr_exp}/${inference_tag}/${dset}
        (
            "$python" -m espnet2.bin.asr_inference --ngpu "$ngpu" --batch_size 1 \
                --config "$inference_config" \
                --asr_train_config "${asr_exp}/config.yaml" \
                --asr_model_file "${asr_exp}/${inference_asr_model}" \
                --data_path_and_name_and_type "${dumpdir}/raw/${dset}/wav.scp,speech,sound" \
                --key_file "$ddir/logdir/keys.$i" --output_dir "$ddir/logdir/output.$i" \
                ${inference_args} > "$ddir/logdir/asr_inference.$i.log" 2>&1 \
                || { echo "decode job failed: $ddir/logdir/asr_inference.$i.log" >&2; exit 1; }
        ) &
        running=$((running + 1))
        if [[ $running -ge $nj ]]; then
            wait -n || failed=1; running=$((running - 1)); done_n=$((done_n + 1))
            log "decode: ${done_n}/${#tasks[@]} jobs done"
        fi
    done
    while [[ $running -gt 0 ]]; do
        wait -n || failed=1; running=$((running - 1)); done_n=$((done_n + 1))
        log "decode: ${done_n}/${#tasks[@]} jobs done"
    done
    [[ -z $failed ]] || die "decoding failed (logs under ${asr_exp}/${inference_tag}/*/logdir)"
    for dset in ${test_sets}; do
        ddir=${asr_exp}/${inference_tag}/${dset}
        collect_1best "$ddir"
        nref=$(wc -l < "${dumpdir}/raw/${dset}/text"); nhyp=$(wc -l < "$ddir/text")
        [[ $nref -eq $nhyp ]] || die "${dset}: ${nhyp} hypotheses for ${nref} utterances"
    done
    stage_end
fi

# ------------------------------------------------------------------------------ 6: score
if stage_on 6; then
    stage_start 6 "scoring (WER, CER) -> ${asr_exp}/RESULTS.md"
    "$python" local/score.py --exp "${asr_exp}" --decode_tag "${inference_tag}" \
        --dumpdir "${dumpdir}/raw" --test_sets ${test_sets} --out "${asr_exp}/RESULTS.md"
    cat "${asr_exp}/RESULTS.md" >&2
    # one table (and plot) over every model scored in ${expdir}: after the README's three
    # trainings it is the README's results table
    "$python" local/plot_results.py "${expdir}"/asr_*/results.json \
        --out "${expdir}/wer_vs_length.png" > "${expdir}/RESULTS.md" \
        || die "combined results table failed (local/plot_results.py)"
    log "all models scored in ${expdir} (WER / CER %, also in ${expdir}/RESULTS.md):"
    grep '^|' "${expdir}/RESULTS.md" >&2
    stage_end
fi

# ------------------------------------------------------------------------------ 7: pack
if stage_on 7; then
    stage_start 7 "packing the model (with a model card: ${asr_exp}/README.md)"
    packed=${asr_exp}/$(basename "${asr_exp}")_${inference_asr_model%.pth}.zip
    # the card says that espnet-mamba must be installed to load the model, names the classes,
    # configs and results; it goes into the zip next to config.yaml and RESULTS.md
    "$python" local/model_card.py --exp "${asr_exp}" --model_file "${inference_asr_model}" \
        --asr_config "${asr_config}" --inference_config "${inference_config}" \
        --recipe "egs2/mini_synth/asr1" --out "${asr_exp}/README.md" > /dev/null \
        || die "model card failed (local/model_card.py)"
    opts=(--option "${asr_exp}/README.md")
    [[ -s ${asr_exp}/RESULTS.md ]] && opts+=(--option "${asr_exp}/RESULTS.md")
    [[ -n $bpemodel ]] && opts+=(--option "$bpemodel")
    "$python" -m espnet2.bin.pack asr --asr_train_config "${asr_exp}/config.yaml" \
        --asr_model_file "${asr_exp}/${inference_asr_model}" \
        --option "${asr_stats_dir}/train/feats_stats.npz" "${opts[@]}" \
        --outpath "$packed" > "${asr_exp}/pack.log" 2>&1 \
        || { tail "${asr_exp}/pack.log"; die "pack failed"; }
    log "packed: $packed ($(du -h "$packed" | cut -f1))"
    stage_end
fi

# ------------------------------------------------------------------------------ 8: stream
if [[ $streaming == true ]] && stage_on 8; then
    stage_start 8 "streaming decoding of ${test_sets} in ${streaming_chunk}-sample chunks" \
        "(${nj} jobs${streaming_args:+, $streaming_args}) -> ${asr_exp}/${streaming_tag}"
    [[ -e ${asr_exp}/${inference_asr_model} ]] || die "no ${asr_exp}/${inference_asr_model}: run stage 4"
    decode_jobs "${streaming_tag}"
    # the same decoding options as stage 5 (config, then inference_args), so that the final
    # hypotheses differ from stage 5's only by what streaming changes
    pids=(); failed=
    for t in "${tasks[@]}"; do
        IFS=: read -r dset i <<< "$t"
        ddir=${asr_exp}/${streaming_tag}/${dset}
        "$python" -m espnet_mamba.integration.streaming_asr_inference --ngpu "$ngpu" \
            --batch_size 1 --config "$inference_config" \
            --asr_train_config "${asr_exp}/config.yaml" \
            --asr_model_file "${asr_exp}/${inference_asr_model}" \
            --data_path_and_name_and_type "${dumpdir}/raw/${dset}/wav.scp,speech,sound" \
            --key_file "$ddir/logdir/keys.$i" --output_dir "$ddir/logdir/output.$i" \
            --sim_chunk_length "$streaming_chunk" ${inference_args} ${streaming_args} \
            > "$ddir/logdir/streaming_inference.$i.log" 2>&1 &
        pids+=($!)
        if [[ ${#pids[@]} -ge $nj ]]; then
            wait "${pids[0]}" || failed=1; pids=("${pids[@]:1}")
        fi
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    [[ -z $failed ]] || die "streaming decoding failed (logs: ${asr_exp}/${streaming_tag}/*/logdir/streaming_inference.*.log)"
    for dset in ${test_sets}; do
        ddir=${asr_exp}/${streaming_tag}/${dset}
        collect_1best "$ddir"
        for f in rtf slowest_chunk_seconds utterances; do
            cat "$ddir"/logdir/output.*/streaming/$f 2>/dev/null | sort > "$ddir/$f" || true
        done
        nref=$(wc -l < "${dumpdir}/raw/${dset}/text"); nhyp=$(wc -l < "$ddir/text")
        [[ $nref -eq $nhyp ]] || die "${dset}: ${nhyp} streaming hypotheses for ${nref} utterances"
    done
    # results.json lands next to this RESULTS.md, inside the tag's directory: the offline
    # ${asr_exp}/results.json (and the combined table of stage 6) stay the offline ones
    "$python" local/score.py --exp "${asr_exp}" --decode_tag "${streaming_tag}" \
        --dumpdir "${dumpdir}/raw" --test_sets ${test_sets} \
        --out "${asr_exp}/${streaming_tag}/RESULTS.md"
    # real-time factor of a set: processing seconds over audio seconds, summed over its
    # recordings (each line of rtf is one recording's ratio; utt2dur gives its seconds)
    "$python" - "${asr_exp}/${streaming_tag}" "${dumpdir}/raw" ${test_sets} \
        >> "${asr_exp}/${streaming_tag}/RESULTS.md" <<'EOF'
import sys
from pathlib import Path
root, dump, sets = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
read = lambda f: {l.split()[0]: float(l.split()[1]) for l in open(f) if l.strip()}
print("### Real-time factor (processing s / audio s, one thread a job)\n")
print("|dataset|recordings|audio s|RTF|slowest chunk s|")
print("|---|---|---|---|---|")
for dset in sets:
    dur, rtf = read(dump / dset / "utt2dur"), read(root / dset / "rtf")
    slow = read(root / dset / "slowest_chunk_seconds")
    audio = sum(dur[k] for k in rtf)
    proc = sum(rtf[k] * dur[k] for k in rtf)
    print(f"|{root.name}/{dset}|{len(rtf)}|{audio:.1f}|{proc / max(audio, 1e-9):.4f}|"
          f"{max(slow.values(), default=0.0):.3f}|")
EOF
    cat "${asr_exp}/${streaming_tag}/RESULTS.md" >&2
    stage_end
fi

summary="total $((SECONDS - t_all)) s"
for s in 1 2 3 4 5 6 7 8; do [[ -n ${stage_time[$s]:-} ]] && summary+=", stage $s ${stage_time[$s]} s"; done
log "finished: ${summary}"
if [[ -n ${stage_time[*]:-} ]]; then
    mkdir -p "${asr_exp}"; echo "$(date '+%F %T') stages ${stage}-${stop_stage}: ${summary}" >> "${asr_exp}/run_times.txt"
fi
exit 0
}
