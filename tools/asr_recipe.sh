# Stages shared by the synthetic-speech recipes (egs2/mini_synth/asr1, egs2/synth_speech/asr1):
# sourced by their run.sh, which declares its options, makes its corpus (stage 1, its own
# local/make_corpus.py) and calls the functions below for every other stage, in ESPnet's order:
#   asr_dump_sets SET...   data/<set> -> dump/raw/<set> (raw wavs, as asr.sh's feats_type raw)
#   asr_stage_tokens       2 char and sentencepiece BPE token lists (espnet2.bin.tokenize_text)
#   asr_stage_stats        3 asr_train --collect_stats true in nj jobs + aggregate_stats_dirs
#   asr_stage_train        4 asr_train
#   asr_stage_decode       5 asr_inference, nj jobs over every test set
#   asr_stage_score        6 local/score.py -> RESULTS.md; local/plot_results.py over all models
#   asr_stage_pack         7 local/model_card.py, espnet2.bin.pack asr -> zip
#   asr_stage_stream       8 streaming_asr_inference in chunks, scored as stage 6, with the RTF
# The caller sets (asr.sh's names where they exist): SELF (its run.sh), REPO_ROOT, python, nj,
# ngpu, nthreads, seed, lang, token_type, nbpe, bpemode, asr_config, inference_config, asr_tag,
# asr_args, inference_args, inference_asr_model, expdir, dumpdir, datadir, train_set, valid_set,
# test_sets, streaming, streaming_chunk, streaming_args, streaming_tag, recipe
# (egs2/<name>/asr1), train_joined_seconds, train_joined_share, and optionally:
#   decode_split   jobs per test set in decoding (default nj)
#   decode_union   true: every test set decoded as one list (see decode_jobs)
#   decode_alone_seconds  a recording at least this long is a decoding job of its own (default 600)
#   decode_batch_size  recordings per asr_inference batch at most (default 1); a job holds
#                  recordings of about one length, longest first, so that a batch does too
#   decode_batch_seconds  audio per batch at most, as recordings x the job's longest (default
#                  240): a job of long recordings decodes fewer at a time (job_batch_size)
#   num_workers    data loader processes of training (default 0)
#   plot_sets      regular expression of the sets local/plot_results.py plots; plot_title
#   usage_lines    the lines of run.sh's header that --help prints (default 2,20)
# Sourcing this file defines functions and the variables stage_time, recipe_errors (what failed
# without ending the run: finish exits 1 after naming them) and ALL_SETS; it runs nothing.

log() { echo -e "[$(date '+%H:%M:%S')] $*" >&2; }
die() { echo -e "ERROR: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------ options
# run.sh's options are the `name=value` lines between `# --- options` and `# end of options`
options_block() { sed -n '/^# -* options$/,/^# end of options$/p' "$SELF" | grep -E '^[a-z_]+='; }
usage() {
    sed -n "${usage_lines:-2,20}p" "$SELF" | sed 's/^# \{0,1\}//'
    echo; echo "Options (default):"
    options_block | sed -E 's/^([a-z_]+)=(.*)/  --\1 \2/'
}
parse_options() {  # parse_options "$@": --name value / --name=value for every declared option
    local known k v
    known=" $(options_block | cut -d= -f1 | tr '\n' ' ') "
    while [[ $# -gt 0 ]]; do
        case $1 in
            -h|--help) usage; exit 0 ;;
            --*=*) k=${1%%=*}; k=${k#--}; v=${1#*=}; shift ;;
            --*) [[ $# -ge 2 ]] || die "option $1 needs a value"; k=${1#--}; v=$2; shift 2 ;;
            *) die "unexpected argument '$1' (options are --name value; --help lists them)" ;;
        esac
        [[ $known == *" $k "* ]] || die "unknown option --$k (--help lists them)"
        printf -v "$k" '%s' "$v"
    done
}

# token list, experiment and decoding names from the options (asr.sh's naming)
resolve_names() {
    case $token_type in
        char) token_dir=${datadir}/${lang}_token_list/char; bpemodel= ;;
        bpe) token_dir=${datadir}/${lang}_token_list/bpe_${bpemode}${nbpe}
             bpemodel=${token_dir}/bpe.model ;;
        *) die "--token_type must be char or bpe (got '$token_type')" ;;
    esac
    token_list=${token_dir}/tokens.txt
    tok_suffix=${token_type}; [[ $token_type == bpe ]] && tok_suffix+=${nbpe}
    # --train_joined_seconds S [--train_joined_share F]: stages 2-8 train on
    # <train_set>_joined<S>s[_share<F>] (asr_join_train_set),
    # the corpus stage still makes <train_set> (corpus_train_set)
    corpus_train_set=${corpus_train_set:-$train_set}
    local joined=
    if [[ -n ${train_joined_seconds:-} ]]; then
        [[ $train_joined_seconds =~ ^[0-9]+([.][0-9]+)?$ && ! $train_joined_seconds =~ ^0+([.]0+)?$ ]] \
            || die "--train_joined_seconds must be a number of seconds > 0 (got '$train_joined_seconds')"
        joined=_joined${train_joined_seconds}s
        if [[ -n ${train_joined_share:-} ]]; then
            awk -v f="$train_joined_share" 'BEGIN { exit !(f ~ /^(0?[.][0-9]+|1([.]0*)?)$/ && f > 0) }' \
                || die "--train_joined_share must be a share in (0, 1] (got '$train_joined_share')"
            joined+=_share${train_joined_share}
        fi
        train_set=${corpus_train_set}${joined}
    elif [[ -n ${train_joined_share:-} ]]; then
        die "--train_joined_share ${train_joined_share} needs --train_joined_seconds"
    fi
    [[ -n $asr_tag ]] || asr_tag="$(basename "${asr_config}" .yaml)_raw_${lang}_${tok_suffix}${joined}"
    asr_exp=${expdir}/asr_${asr_tag}
    # the statistics belong to the training set: a joined set gets its own (a run on the plain
    # set must not read statistics that another run's stage 3 computed over joined recordings)
    asr_stats_dir=${expdir}/asr_stats_raw_${lang}_${tok_suffix}${joined}
    inference_tag="$(basename "${inference_config}" .yaml)_asr_model_${inference_asr_model%.pth}"
    if [[ -z $streaming_tag ]]; then
        streaming_tag=streaming${streaming_chunk}_${inference_tag}
        [[ $streaming_args == *endpoint* || $streaming_args == *max_utterance* ]] && streaming_tag+=_ep
    fi
    return 0
}

# ------------------------------------------------------------------------------ environment
find_python() {
    if [[ -n $python ]]; then echo "$python"; return; fi
    if [[ -n ${VIRTUAL_ENV:-} && -x ${VIRTUAL_ENV}/bin/python ]]; then
        echo "${VIRTUAL_ENV}/bin/python"; return; fi
    if [[ -x ${REPO_ROOT}/.venv/bin/python ]]; then echo "${REPO_ROOT}/.venv/bin/python"; return; fi
    bash "${REPO_ROOT}/tools/find_python.sh"
}
setup_python() {
    python=$(find_python) || die "no Python found: run 'bash tools/setup_env.sh' in ${REPO_ROOT}"
    export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
    unset ESPNET_MAMBA_DISABLE_HOOK
}

stage_on() { [[ $stage -le $1 && $stop_stage -ge $1 ]]; }
declare -A stage_time=()
recipe_errors=()
stage_start() { log "=== stage $1: $2"; t_stage=$SECONDS; cur_stage=$1; }
stage_end() { stage_time[$cur_stage]=$((SECONDS - t_stage)); log "=== stage $cur_stage done in ${stage_time[$cur_stage]} s"; }

install_check() {  # install_check [EXTRA_CHECK_COMMAND...]: Python packages, and the TTS tools
    # when stage 1 runs; an extra check (a function) adds to the missing array
    local t0=$SECONDS
    missing=()
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
        [[ $# -eq 0 ]] || "$@"
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

decode_jobs() {  # decode_jobs TAG: a fresh ${asr_exp}/TAG/<set>/logdir per test set, its keys
    # split for decode_split (default nj) jobs (split_keys); the jobs, as "set:index", in the
    # array tasks (nj of them run at a time).  With decode_union=true, one pseudo set ALL_SETS
    # of every test set's recordings (each job then loads ESPnet and the model once for all
    # sets); split_decoded gives each set its share of the results.
    local dset ddir k i
    tasks=()
    for dset in $(decode_sets); do
        ddir=${asr_exp}/$1/${dset}
        rm -rf "$ddir"; mkdir -p "$ddir/logdir"
        [[ $dset == "$ALL_SETS" ]] && union_dir "$ddir"
        k=$(split_keys "$(decode_src "$1" "$dset")" "${decode_split:-$nj}" "$ddir/logdir/keys" longest_first)
        for i in $(seq 1 "$k"); do tasks+=("$dset:$i"); done
    done
}
ALL_SETS=all_test_sets
decode_sets() { if [[ ${decode_union:-false} == true ]]; then echo "$ALL_SETS"; else echo ${test_sets}; fi; }
decode_src() {  # decode_src TAG SET: the folder of the set's wav.scp and utt2dur
    if [[ $2 == "$ALL_SETS" ]]; then echo "${asr_exp}/$1/$2"; else echo "${dumpdir}/raw/$2"; fi
}
union_dir() {  # union_dir DIR: wav.scp and utt2dur of every test set in DIR; keys must differ
    local dset f
    for f in wav.scp utt2dur; do
        for dset in ${test_sets}; do cat "${dumpdir}/raw/${dset}/$f"; done | LC_ALL=C sort > "$1/$f"
    done
    [[ -z $(cut -d' ' -f1 "$1/wav.scp" | uniq -d | head -1) ]] \
        || die "test sets share recording ids ($(cut -d' ' -f1 "$1/wav.scp" | uniq -d | head -3 | tr '\n' ' ')): decode them with decode_union=false"
}
split_decoded() {  # split_decoded TAG: the ALL_SETS 1-best files into each test set's folder
    local dset f
    for dset in ${test_sets}; do
        rm -rf "${asr_exp}/$1/${dset}"; mkdir -p "${asr_exp}/$1/${dset}"
        for f in text token score; do
            awk 'NR == FNR { keep[$1]; next } ($1 in keep)' "${dumpdir}/raw/${dset}/wav.scp" \
                "${asr_exp}/$1/${ALL_SETS}/$f" > "${asr_exp}/$1/${dset}/$f"
        done
    done
}

collect_1best() {  # collect_1best DIR: the decoding jobs' 1-best text, token and score, sorted
    local f
    for f in text token score; do
        cat "$1"/logdir/output.*/1best_recog/$f 2>/dev/null | sort > "$1/$f" || true
    done
}

split_keys() {  # split_keys SRC_DIR N OUT_PREFIX [ORDER] -> OUT_PREFIX.1 .. OUT_PREFIX.K; prints K
    # a key list (first column of wav.scp) in up to N parts of about equal duration (utt2dur),
    # plus one part for each recording of at least decode_alone_seconds (default 600; with
    # ORDER=longest_first these come first, longest first, as decoding starts its jobs).  By
    # default each part is a mix of lengths, in wav.scp's (sorted) order.  With
    # ORDER=longest_first (decoding) the parts are runs of the recordings sorted by length, each
    # from its longest recording down: ESPnet batches the recordings in the order it reads them,
    # so a batch holds recordings of about one length, and a part of long recordings can be
    # decoded with smaller batches (job_batch_size); decode_job writes each job a wav.scp in its
    # keys' order, as ESPnet reads a key file and wav.scp in step
    "$python" - "$1" "$2" "$3" "${decode_alone_seconds:-600}" "${4:-sorted}" <<'EOF'
import sys
src, n, out, alone = sys.argv[1], max(int(sys.argv[2]), 1), sys.argv[3], float(sys.argv[4])
order = sys.argv[5]
keys = [l.split()[0] for l in open(f"{src}/wav.scp") if l.strip()]
dur = {}
try:
    dur = {l.split()[0]: float(l.split()[1]) for l in open(f"{src}/utt2dur") if l.strip()}
except FileNotFoundError:
    pass
# a recording of at least `alone` seconds is a job of its own: it is decoded beside the rest,
# not after a bin's other recordings, and if it fails (out of memory) it takes nothing else along
alone_keys = [k for k in keys if dur.get(k, 1.0) >= alone]
rest = [k for k in keys if dur.get(k, 1.0) < alone]
parts = [[0.0, []] for _ in range(min(n, len(rest)))]
by_length = sorted(rest, key=lambda k: (-dur.get(k, 1.0), k))
if order == "longest_first":
    # runs of equal duration: a recording goes to the part its midpoint falls in
    share, done = (sum(dur.get(k, 1.0) for k in rest) or 1.0) / max(len(parts), 1), 0.0
    for k in by_length:
        d = dur.get(k, 1.0)
        parts[min(int((done + d / 2) / share), len(parts) - 1)][1].append(k)
        done += d
    parts = [p for p in parts if p[1]]
else:
    for k in by_length:  # longest first into the lightest part
        p = min(parts, key=lambda p: p[0])
        p[0] += dur.get(k, 1.0)
        p[1].append(k)
alone_bins = [[dur[k], [k]] for k in alone_keys]
if order == "longest_first":
    # the longest jobs first: started before the others, they are not the ones left running
    # at the end
    bins = sorted(alone_bins, key=lambda b: -b[0]) + parts
else:
    bins = parts + alone_bins
for i, (_, ks) in enumerate(bins, 1):
    ks = sorted(ks, key=lambda k: (-dur.get(k, 1.0), k)) if order == "longest_first" else sorted(ks)
    with open(f"{out}.{i}", "w") as f:
        f.writelines(k + "\n" for k in ks)
print(len(bins))
EOF
}

token_args() {
    echo --token_type "$token_type" --token_list "$token_list"
    [[ -n $bpemodel ]] && echo --bpemodel "$bpemodel"
    return 0
}

data_args() {  # data_args SPLIT_PREFIX DSET  (train|valid)
    echo --"$1"_data_path_and_name_and_type "${dumpdir}/raw/$2/wav.scp,speech,sound" \
         --"$1"_data_path_and_name_and_type "${dumpdir}/raw/$2/text,text,text"
}

# ------------------------------------------------------------------------------ 1: dump
asr_dump_sets() {  # asr_dump_sets SET...: data/<set> -> dump/raw/<set> (feats_type raw)
    local dset
    for dset in "$@"; do
        [[ -s ${datadir}/${dset}/wav.scp ]] || die "${datadir}/${dset} was not made"
        rm -rf "${dumpdir}/raw/${dset}"; mkdir -p "${dumpdir}/raw/${dset}"
        cp "${datadir}/${dset}"/{wav.scp,text,utt2spk,spk2utt,utt2dur} "${dumpdir}/raw/${dset}/"
        echo raw > "${dumpdir}/raw/${dset}/feats_type"
    done
}

# The training set plus its utterances joined per voice into recordings of about
# --train_joined_seconds (tools/join_utterances.py): the end of stage 1 when the option is set
asr_join_train_set() {
    [[ -n ${train_joined_seconds:-} ]] || return 0
    "$python" "${REPO_ROOT}/tools/join_utterances.py" --src "${dumpdir}/raw/${corpus_train_set}" \
        --dst "${dumpdir}/raw/${train_set}" --wav_dir "${wavdir}/${train_set}" \
        --seconds "$train_joined_seconds" ${train_joined_share:+--share "$train_joined_share"} \
        --seed "$seed" >&2 \
        || die "joining the training utterances into ${dumpdir}/raw/${train_set} failed"
}

require_train_set() {
    [[ -s ${dumpdir}/raw/${train_set}/wav.scp ]] && return 0
    [[ -n ${train_joined_seconds:-} ]] && die "no ${dumpdir}/raw/${train_set}: run stage 1 with" \
        "--train_joined_seconds ${train_joined_seconds} (or tools/join_utterances.py)"
    die "no ${dumpdir}/raw/${train_set}: run stage 1"
}

# ------------------------------------------------------------------------------ 2: tokens
asr_stage_tokens() {
    stage_start 2 "token lists (char, bpe ${bpemode}${nbpe}) from ${dumpdir}/raw/${train_set}/text"
    local srctexts=${datadir}/${lang}_token_list/train_text.txt
    mkdir -p "${datadir}/${lang}_token_list/char"
    cut -d' ' -f2- "${dumpdir}/raw/${train_set}/text" > "$srctexts"
    "$python" -m espnet2.bin.tokenize_text --token_type char --input "$srctexts" \
        --output "${datadir}/${lang}_token_list/char/tokens.txt" --field 1- --cleaner none \
        --write_vocabulary true --add_symbol '<blank>:0' --add_symbol '<unk>:1' \
        --add_symbol '<sos/eos>:-1' 2> "${datadir}/${lang}_token_list/char/tokenize.log" \
        || { tail "${datadir}/${lang}_token_list/char/tokenize.log"; die "tokenize_text (char) failed"; }
    local bdir=${datadir}/${lang}_token_list/bpe_${bpemode}${nbpe}
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
}
require_token_list() {  # stages 3-7 need the token list of stage 2
    [[ $stage -gt 2 || $stop_stage -lt 2 ]] && [[ ! -s $token_list ]] && [[ $stage -le 7 ]] && \
        [[ $stop_stage -ge 3 ]] && die "no token list ${token_list}: run stage 2 first"
    return 0
}

# ------------------------------------------------------------------------------ 3: stats
asr_stage_stats() {
    stage_start 3 "feature statistics (asr_train --collect_stats true, ${nj} jobs)"
    local logdir=${asr_stats_dir}/logdir ntr nva n i j pids=()
    rm -rf "${asr_stats_dir}"; mkdir -p "$logdir"
    ntr=$(split_keys "${dumpdir}/raw/${train_set}" "$nj" "$logdir/train.scp")
    nva=$(split_keys "${dumpdir}/raw/${valid_set}" "$nj" "$logdir/valid.scp")
    n=$(( ntr < nva ? ntr : nva ))
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
}

# ------------------------------------------------------------------------------ 4: train
# --resume true, as ESPnet's asr.sh: a training that was stopped goes on from the last epoch's
# checkpoint.pth when the stage runs again (remove ${asr_exp} to start over)
asr_stage_train() {
    stage_start 4 "training ${asr_exp} (${asr_config}, ${nthreads} threads${asr_args:+, $asr_args})"
    [[ -s ${asr_stats_dir}/train/feats_stats.npz ]] || die "no stats in ${asr_stats_dir}: run stage 3"
    mkdir -p "${asr_exp}"
    OMP_NUM_THREADS=$nthreads MKL_NUM_THREADS=$nthreads run_logged "${asr_exp}/train.log" \
        'epoch results|[0-9]+epoch:train:[0-9]+-[0-9]+batch|Total Number of model parameters|The training was finished|Averaging|Traceback|Error' \
        "$python" -m espnet2.bin.asr_train --config "$asr_config" --use_preprocessor true \
        $(token_args) --ngpu "$ngpu" --num_workers "${num_workers:-0}" --seed "$seed" \
        --use_tensorboard false --use_matplotlib false \
        --normalize global_mvn --normalize_conf "stats_file=${asr_stats_dir}/train/feats_stats.npz" \
        $(data_args train "${train_set}") $(data_args valid "${valid_set}") \
        --train_shape_file "${asr_stats_dir}/train/speech_shape" \
        --train_shape_file "${asr_stats_dir}/train/text_shape" \
        --valid_shape_file "${asr_stats_dir}/valid/speech_shape" \
        --valid_shape_file "${asr_stats_dir}/valid/text_shape" \
        --fold_length 80000 --fold_length 150 --resume true \
        --output_dir "${asr_exp}" ${asr_args}
    [[ -e ${asr_exp}/${inference_asr_model} ]] || die "training left no ${asr_exp}/${inference_asr_model}"
    stage_end
}

# ------------------------------------------------------------------------------ 5: decode
job_wav_scp() {  # job_wav_scp SRC_WAV_SCP KEYS OUT: the lines of the keys, in the keys' order
    # (ESPnet reads a key file and wav.scp in step, so a job's list in another order than the
    # set's sorted wav.scp needs a wav.scp of its own)
    awk 'NR == FNR { wav[$1] = $0; next } { print wav[$1] }' "$1" "$2" > "$3"
}

job_batch_size() {  # job_batch_size KEYS UTT2DUR: recordings a batch for this key list:
    # decode_batch_size (default 1), fewer where that many of its longest recording would hold
    # more than decode_batch_seconds (default 240) of audio; at least 1.  Batches of several
    # minutes of audio each ran out of GPU memory where several decodings shared the GPU.
    [[ -s $2 ]] || { echo "${decode_batch_size:-1}"; return; }
    awk -v most="${decode_batch_size:-1}" -v seconds="${decode_batch_seconds:-240}" '
        NR == FNR { want[$1]; next }
        ($1 in want) && $2 > longest { longest = $2 }
        END { b = most; if (longest > 0 && int(seconds / longest) < b) b = int(seconds / longest)
              print (b < 1 ? 1 : b) }' "$1" "$2"
}

decode_job() {  # decode_job SET I [SUFFIX [BATCH]]: asr_inference over keys.I[SUFFIX] ->
    # output.I[SUFFIX], BATCH (default job_batch_size) recordings a batch; the exit status in
    # status.I[SUFFIX]
    local ddir=${asr_exp}/${inference_tag}/$1 j=$2${3:-} rc=0 src batch
    src=$(decode_src "${inference_tag}" "$1")
    batch=${4:-$(job_batch_size "$ddir/logdir/keys.$j" "$src/utt2dur" || echo 1)}
    job_wav_scp "$src/wav.scp" "$ddir/logdir/keys.$j" "$ddir/logdir/wav.$j.scp" || rc=$?
    # the batch size after inference_args: job_batch_size (or BATCH) decides it, and the
    # second try of an out-of-memory job must stay at one recording
    [[ $rc -ne 0 ]] || "$python" -m espnet2.bin.asr_inference --ngpu "$ngpu" \
        --config "$inference_config" \
        --asr_train_config "${asr_exp}/config.yaml" \
        --asr_model_file "${asr_exp}/${inference_asr_model}" \
        --data_path_and_name_and_type "$ddir/logdir/wav.$j.scp,speech,sound" \
        --key_file "$ddir/logdir/keys.$j" --output_dir "$ddir/logdir/output.$j" \
        ${inference_args} --batch_size "$batch" \
        > "$ddir/logdir/asr_inference.$j.log" 2>&1 || rc=$?
    echo "$rc" > "$ddir/logdir/status.$j"
    [[ $rc -eq 0 ]] || echo "decode job failed: $ddir/logdir/asr_inference.$j.log" >&2
    return "$rc"
}

undecoded_keys() {  # undecoded_keys SET I: the keys of job I without a 1-best hypothesis
    local ldir=${asr_exp}/${inference_tag}/$1/logdir
    grep -vxF -f <(cut -d' ' -f1 "$ldir/output.$2/1best_recog/text" 2>/dev/null) "$ldir/keys.$2" || true
}

asr_stage_decode() {
    stage_start 5 "decoding ${test_sets} with ${inference_config} (${nj} jobs)"
    [[ -e ${asr_exp}/${inference_asr_model} ]] || die "no ${asr_exp}/${inference_asr_model}: run stage 4"
    decode_jobs "${inference_tag}"
    local running=0 done_n=0 failed= t dset i ddir nref nhyp n
    for t in "${tasks[@]}"; do
        IFS=: read -r dset i <<< "$t"
        decode_job "$dset" "$i" &
        running=$((running + 1))
        if [[ $running -ge $nj ]]; then
            wait -n || true; running=$((running - 1)); done_n=$((done_n + 1))
            log "decode: ${done_n}/${#tasks[@]} jobs done"
        fi
    done
    while [[ $running -gt 0 ]]; do
        wait -n || true; running=$((running - 1)); done_n=$((done_n + 1))
        log "decode: ${done_n}/${#tasks[@]} jobs done"
    done
    # A job that ran out of GPU memory beside the others (the jobs, and other trainings or
    # decodings, share the GPU) is given a second chance alone, after they have ended: its
    # recordings without a hypothesis are decoded again, one job and one recording at a time.
    for t in "${tasks[@]}"; do
        IFS=: read -r dset i <<< "$t"
        ddir=${asr_exp}/${inference_tag}/${dset}
        [[ $(cat "$ddir/logdir/status.$i") != 0 ]] || continue
        grep -qE 'OutOfMemoryError|CUDA out of memory' "$ddir/logdir/asr_inference.$i.log" || continue
        # shortest first: the recording that ran out of memory is most likely the longest, and
        # if it does again, the ones before it are decoded
        undecoded_keys "$dset" "$i" | tac > "$ddir/logdir/keys.$i.retry"
        n=$(wc -l < "$ddir/logdir/keys.$i.retry")
        log "decode: job ${i} of ${dset} ran out of GPU memory (${ddir}/logdir/asr_inference.${i}.log):" \
            "its ${n} recordings without a hypothesis are decoded again, alone"
        if [[ $n -eq 0 ]] || decode_job "$dset" "$i" .retry 1; then echo 0 > "$ddir/logdir/status.$i"; fi
    done
    for t in "${tasks[@]}"; do
        IFS=: read -r dset i <<< "$t"
        [[ $(cat "${asr_exp}/${inference_tag}/${dset}/logdir/status.$i") == 0 ]] || failed=1
    done
    # A failed job (e.g. out of memory on the longest recording) does not discard the others:
    # every set with a hypothesis for each utterance is scored; a set without is marked FAILED
    # (stage 6 skips it, and the run ends with an error that names it and the logs).
    [[ -z $failed ]] || log "ERROR: decoding jobs failed (logs: grep -l Traceback ${asr_exp}/${inference_tag}/*/logdir/*.log)"
    for dset in $(decode_sets); do collect_1best "${asr_exp}/${inference_tag}/${dset}"; done
    [[ ${decode_union:-false} == true ]] && split_decoded "${inference_tag}"
    for dset in ${test_sets}; do
        ddir=${asr_exp}/${inference_tag}/${dset}
        nref=$(wc -l < "${dumpdir}/raw/${dset}/text"); nhyp=$(wc -l < "$ddir/text")
        if [[ $nref -ne $nhyp ]]; then
            echo "${nhyp} hypotheses for ${nref} utterances: a decoding job failed" \
                "(logs: ${asr_exp}/${inference_tag}/*/logdir/asr_inference.*.log)" > "$ddir/FAILED"
            recipe_errors+=("${dset}: $(cat "$ddir/FAILED")")
        fi
    done
    [[ -z $failed || ${#recipe_errors[@]} -gt 0 ]] \
        || die "decoding jobs failed, yet every set has all its hypotheses: see the logs above"
    stage_end
}

# ------------------------------------------------------------------------------ 6: score
asr_stage_score() {
    stage_start 6 "scoring (WER, CER) -> ${asr_exp}/RESULTS.md"
    local dset scored=()
    for dset in ${test_sets}; do  # a set whose decoding failed (stage 5) is left out, by name
        if [[ -e ${asr_exp}/${inference_tag}/${dset}/FAILED ]]; then
            log "ERROR: ${dset} not scored: $(cat "${asr_exp}/${inference_tag}/${dset}/FAILED")"
            # the run ends with this error too (stage 5 has named it already if it ran now)
            stage_on 5 || recipe_errors+=("${dset}: $(cat "${asr_exp}/${inference_tag}/${dset}/FAILED")")
        else scored+=("$dset"); fi
    done
    [[ ${#scored[@]} -gt 0 ]] || die "no test set was decoded completely (stage 5)"
    "$python" local/score.py --exp "${asr_exp}" --decode_tag "${inference_tag}" \
        --dumpdir "${dumpdir}/raw" --test_sets "${scored[@]}" --out "${asr_exp}/RESULTS.md"
    cat "${asr_exp}/RESULTS.md" >&2
    # one table (and plot) over every model scored in ${expdir}: after the README's
    # trainings it is the README's results table
    "$python" local/plot_results.py "${expdir}"/asr_*/results.json \
        ${plot_sets:+--plot_sets "$plot_sets"} ${plot_title:+--title "$plot_title"} \
        --out "${expdir}/wer_vs_length.png" > "${expdir}/RESULTS.md" \
        || die "combined results table failed (local/plot_results.py)"
    log "all models scored in ${expdir} (WER / CER %, also in ${expdir}/RESULTS.md):"
    grep '^|' "${expdir}/RESULTS.md" >&2
    stage_end
}

# ------------------------------------------------------------------------------ 7: pack
asr_stage_pack() {
    stage_start 7 "packing the model (with a model card: ${asr_exp}/README.md)"
    local packed=${asr_exp}/$(basename "${asr_exp}")_${inference_asr_model%.pth}.zip opts
    # the card says that espnet-mamba must be installed to load the model, names the classes,
    # configs and results; it goes into the zip next to config.yaml and RESULTS.md
    "$python" local/model_card.py --exp "${asr_exp}" --model_file "${inference_asr_model}" \
        --asr_config "${asr_config}" --inference_config "${inference_config}" \
        --recipe "${recipe}" --out "${asr_exp}/README.md" > /dev/null \
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
}

# ------------------------------------------------------------------------------ 8: stream
asr_stage_stream() {
    stage_start 8 "streaming decoding of ${test_sets} in ${streaming_chunk}-sample chunks" \
        "(${nj} jobs${streaming_args:+, $streaming_args}) -> ${asr_exp}/${streaming_tag}"
    [[ -e ${asr_exp}/${inference_asr_model} ]] || die "no ${asr_exp}/${inference_asr_model}: run stage 4"
    local decode_union=false  # one job list per set: the real-time factor is summed per set
    decode_jobs "${streaming_tag}"
    # the same decoding options as stage 5 (config, then inference_args), so that the final
    # hypotheses differ from stage 5's only by what streaming changes
    local pids=() failed= t dset i ddir f nref nhyp pid
    for t in "${tasks[@]}"; do
        IFS=: read -r dset i <<< "$t"
        ddir=${asr_exp}/${streaming_tag}/${dset}
        job_wav_scp "${dumpdir}/raw/${dset}/wav.scp" "$ddir/logdir/keys.$i" "$ddir/logdir/wav.$i.scp"
        "$python" -m espnet_mamba.integration.streaming_asr_inference --ngpu "$ngpu" \
            --batch_size 1 --config "$inference_config" \
            --asr_train_config "${asr_exp}/config.yaml" \
            --asr_model_file "${asr_exp}/${inference_asr_model}" \
            --data_path_and_name_and_type "$ddir/logdir/wav.$i.scp,speech,sound" \
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
        # the partial result over each whole recording (CTC alone, before the final search)
        mkdir -p "${asr_exp}/${streaming_tag}/partial/${dset}"
        cat "$ddir"/logdir/output.*/partial_recog/text 2>/dev/null | sort \
            > "${asr_exp}/${streaming_tag}/partial/${dset}/text" || true
        nref=$(wc -l < "${dumpdir}/raw/${dset}/text"); nhyp=$(wc -l < "$ddir/text")
        [[ $nref -eq $nhyp ]] || die "${dset}: ${nhyp} streaming hypotheses for ${nref} utterances"
    done
    # results.json lands next to this RESULTS.md, inside the tag's directory: the offline
    # ${asr_exp}/results.json (and the combined table of stage 6) stay the offline ones
    "$python" local/score.py --exp "${asr_exp}" --decode_tag "${streaming_tag}" \
        --dumpdir "${dumpdir}/raw" --test_sets ${test_sets} \
        --out "${asr_exp}/${streaming_tag}/RESULTS.md"
    "$python" local/score.py --exp "${asr_exp}" --decode_tag "${streaming_tag}/partial" \
        --dumpdir "${dumpdir}/raw" --test_sets ${test_sets} \
        --out "${asr_exp}/${streaming_tag}/partial/RESULTS.md"
    {
        echo "## Partial results over each whole recording (CTC alone, --partial_search), before the final search"
        echo
        sed -n '/^### /,$p' "${asr_exp}/${streaming_tag}/partial/RESULTS.md"
        echo
    } >> "${asr_exp}/${streaming_tag}/RESULTS.md"
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
}

# ------------------------------------------------------------------------------ stages 2-8
asr_stages_after_corpus() {  # every stage after the corpus, as the options select them
    if stage_on 2 || stage_on 3 || stage_on 4; then require_train_set; fi
    if stage_on 2; then asr_stage_tokens; fi
    require_token_list
    if stage_on 3; then asr_stage_stats; fi
    if stage_on 4; then asr_stage_train; fi
    if stage_on 5; then asr_stage_decode; fi
    if stage_on 6; then asr_stage_score; fi
    if stage_on 7; then asr_stage_pack; fi
    if [[ $streaming == true ]] && stage_on 8; then asr_stage_stream; fi
    return 0
}

finish() {  # the per-stage times, logged and appended to ${asr_exp}/run_times.txt
    local summary="total $((SECONDS - t_all)) s" s
    for s in 1 2 3 4 5 6 7 8; do [[ -n ${stage_time[$s]:-} ]] && summary+=", stage $s ${stage_time[$s]} s"; done
    log "finished: ${summary}"
    if [[ ${#recipe_errors[@]} -gt 0 ]]; then
        printf 'ERROR: %s\n' "${recipe_errors[@]}" >&2
        [[ -n ${stage_time[*]:-} ]] && mkdir -p "${asr_exp}" && \
            echo "$(date '+%F %T') stages ${stage}-${stop_stage}: ${summary}; failed: ${recipe_errors[*]}" >> "${asr_exp}/run_times.txt"
        exit 1
    fi
    if [[ -n ${stage_time[*]:-} ]]; then
        mkdir -p "${asr_exp}"; echo "$(date '+%F %T') stages ${stage}-${stop_stage}: ${summary}" >> "${asr_exp}/run_times.txt"
    fi
    return 0
}
