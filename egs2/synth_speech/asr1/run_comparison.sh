#!/usr/bin/env bash
# The three-model comparison of this recipe in one command: the corpus, token lists and
# statistics once (run.sh stages 1-3), then every config trained, decoded, scored and packed
# (run.sh --stage 4) at the same time, sharing the GPU, and one table over all of them.
#
#   ./run_comparison.sh                                  # conformer, samba_asr, speech_mamba
#   ./run_comparison.sh --configs "samba_asr conformer" --hours 10
#   ./run_comparison.sh --skip_prepare true              # stages 1-3 are done already
#
# Options of its own (the others go to every run.sh as they are):
#   --configs "A B ..."   names of conf/tuning/train_asr_<name>.yaml (default: conformer samba_asr speech_mamba)
#   --nj N                jobs of stages 1-3 (default: all cores); each config decodes with N / configs
#   --decode_nj N         jobs of each config's decoding instead (fewer processes time-share the
#                         GPU less; each batches more recordings: --decode_batch_size)
#   --skip_prepare true   start at stage 4
#   --before_each CMD     run `CMD CONFIG_FILE` before each config starts (e.g. a wait for
#                         something that config needs); a failure skips that config
#   --train_minutes M     a training still running M minutes after it started (its own clock:
#                         a config that waited for --before_each loses none of them) is
#                         stopped at its last completed epoch (at least one) and goes on from
#                         there as ESPnet's resume does: the best epochs so far are averaged,
#                         then decoded, scored and packed (for a time-limited GPU job; the
#                         epochs each model got are in the log, its config.yaml and RESULTS.md).
#                         An epoch expected to end within M/10 minutes more (from its updates
#                         so far, local/epoch_remaining.sh) is finished first, not thrown away
# Logs: exp/comparison/<name>.log (each run.sh's whole output); the lines that report
# progress (stages, epochs, results) are printed here with the name in front.
# Exit status: 0 if every config ran through, else 1 (the failed ones are named).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

configs="conformer samba_asr speech_mamba"
nj=$(nproc 2>/dev/null || echo 2)
skip_prepare=false
decode_nj=
before_each=
train_minutes=
expdir=exp
pass=()
while (($#)); do
    case $1 in
        --configs) configs=$2; shift 2 ;;
        --nj) nj=$2; shift 2 ;;
        --skip_prepare) skip_prepare=$2; shift 2 ;;
        --decode_nj) decode_nj=$2; shift 2 ;;
        --before_each) before_each=$2; shift 2 ;;
        --train_minutes) train_minutes=$2; shift 2 ;;
        --expdir) expdir=$2; pass+=("$1" "$2"); shift 2 ;;
        --stage | --stop_stage | --asr_config | --asr_tag)
            echo "run_comparison.sh: $1 is chosen per config here (see --configs, --skip_prepare)" >&2; exit 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --*) [[ $# -ge 2 ]] || { echo "run_comparison.sh: $1 needs a value" >&2; exit 2; }
             pass+=("$1" "$2"); shift 2 ;;
        *) echo "run_comparison.sh: unexpected argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
log() { echo "[$(date '+%H:%M:%S')] $*" >&2; }
train_seconds=
if [[ -n $train_minutes ]]; then
    train_seconds=$(awk -v m="$train_minutes" 'BEGIN { if (m !~ /^[0-9]+([.][0-9]*)?$/) exit 1; print int(m * 60) }') \
        || { echo "run_comparison.sh: --train_minutes: not a number of minutes: ${train_minutes}" >&2; exit 2; }
fi
[[ -z $decode_nj || $decode_nj =~ ^[1-9][0-9]*$ ]] \
    || { echo "run_comparison.sh: --decode_nj: not a number of jobs: ${decode_nj}" >&2; exit 2; }
read -r -a names <<< "$configs"
((${#names[@]})) || { echo "run_comparison.sh: --configs is empty" >&2; exit 2; }
for name in "${names[@]}"; do
    [[ -f conf/tuning/train_asr_${name}.yaml ]] || {
        echo "run_comparison.sh: --configs: no conf/tuning/train_asr_${name}.yaml" \
            "(there are: $(ls conf/tuning | sed -n 's/^train_asr_\(.*\)\.yaml$/\1/p' | tr '\n' ' '))" >&2; exit 2; }
done
# the smoke run's folders are exp_smoke etc. (run.sh); its logs go beside them
[[ " ${pass[*]} " == *" --smoke true "* && $expdir == exp ]] && expdir=exp_smoke
logdir=${expdir}/comparison
mkdir -p "$logdir"
t0=$SECONDS

if [[ $skip_prepare != true ]]; then
    log "stages 1-3 (corpus, token lists, statistics) with ${nj} jobs"
    ./run.sh --stop_stage 3 --nj "$nj" "${pass[@]}"
fi

# every config at once: the GPU is shared; decoding jobs share the cores
per_nj=$((nj / ${#names[@]})); ((per_nj > 0)) || per_nj=1
[[ -z $decode_nj ]] || per_nj=$decode_nj
declare -A pid=() rc=() stopped=() finishing=() t_start=()
followers=()
start() {  # start NAME [RUN.SH OPTION...]: stages 4-7 of a config in a process group of its own
    local name=$1; shift
    setsid ./run.sh --stage 4 --asr_config "conf/tuning/train_asr_${name}.yaml" --nj "$per_nj" \
        "${pass[@]}" "$@" >> "$logdir/${name}.log" 2>&1 < /dev/null &
    pid[$name]=$!
    # the progress lines, with the config's name in front (tail ends with the run)
    tail -n "$([[ $# -gt 0 ]] && echo 0 || echo +1)" -F --pid="${pid[$name]}" "$logdir/${name}.log" \
        2>/dev/null | grep --line-buffered -E \
        '=== stage|epoch: train|valid |decode: |^\| *test|packed:|ERROR|finished:' \
        | sed -u "s/^/[${name}] /" >&2 &
    followers+=($!)
}
training_dir() {  # training_dir NAME: the exp dir of a config whose stage 4 is running, else ""
    awk '/=== stage 4: training / { dir = $0; sub(/.*=== stage 4: training /, "", dir);
                                     sub(/ .*/, "", dir) } /=== stage 4 done/ { dir = "" }
         END { print dir }' "$logdir/$1.log"
}
stop_if_due() {  # stop_if_due NAME: with --train_minutes, past the limit, at an epoch's end
    local name=$1 dir n since left
    [[ -n $train_seconds && -z ${stopped[$name]:-} ]] || return 0
    local t_train=${t_start[$name]}
    ((SECONDS - t_train >= train_seconds)) || return 0
    dir=$(training_dir "$name"); [[ -n $dir && -s $dir/train.log ]] || return 0
    n=$(last_epoch "$dir/train.log")
    # only once the epoch's files are written (latest.pth is the last, then a moment of
    # bookkeeping: the best-model links): a stop while checkpoint.pth is written would leave it
    # broken; the next epoch's checkpoint is checked for below, with the training paused
    ((n >= 1)) && [[ $(readlink "$dir/latest.pth" 2>/dev/null) == "${n}epoch.pth" ]] || return 0
    since=$(stat -c %Y "$dir/latest.pth" 2>/dev/null) || return 0  # ESPnet replaces it
    since=$(($(date +%s) - since))
    ((since >= 1)) || return 0
    # an epoch that is almost done (expected to end within a tenth of the limit) is finished,
    # once, so that its updates are not thrown away; it is waited for up to twice that
    if [[ -n ${finishing[$name]:-} ]]; then
        ((n < finishing[$name] && SECONDS - t_train < train_seconds + train_seconds / 5)) && return 0
    else
        left=$(bash local/epoch_remaining.sh "$dir/train.log" "$since") || left=
        if [[ -n $left ]] && ((SECONDS - t_train + left <= train_seconds + train_seconds / 10)); then
            finishing[$name]=$((n + 1))
            log "${name}: --train_minutes ${train_minutes} reached in epoch $((n + 1)), expected to" \
                "end in ${left} s: stopped after it"
            return 0
        fi
    fi
    # paused, then checked again: an epoch that ended since, or whose checkpoint.pth is being
    # written (newer than the last epoch's model file: epochs of a few seconds), is not cut
    kill -STOP -- -"${pid[$name]}" 2>/dev/null || true
    if [[ $(last_epoch "$dir/train.log") != "$n" || $dir/checkpoint.pth -nt $dir/${n}epoch.pth ]]; then
        kill -CONT -- -"${pid[$name]}" 2>/dev/null || true
        return 0
    fi
    log "${name}: --train_minutes ${train_minutes} reached: training stopped after ${n} epochs;" \
        "the best of them are averaged, then decoded"
    kill -- -"${pid[$name]}" 2>/dev/null || true
    kill -CONT -- -"${pid[$name]}" 2>/dev/null || true  # a stopped process acts on TERM once continued
    wait "${pid[$name]}" 2>/dev/null || true
    cp "$dir/train.log" "$dir/train.stopped.log"  # stage 4 writes train.log anew
    stopped[$name]=$n
    start "$name" --max_epoch "$n"
}
last_epoch() {  # last_epoch TRAIN_LOG: the number of the last epoch with results in it (0: none)
    # (a resumed training's log starts at the epoch after its checkpoint's, not at 1)
    local n
    n=$(grep -o '[0-9]*epoch results' "$1" 2>/dev/null | tail -n 1 | grep -o '^[0-9]*') || n=
    echo "${n:-0}"
}
for name in "${names[@]}"; do
    config=conf/tuning/train_asr_${name}.yaml
    if [[ -n $before_each ]] && ! $before_each "$config"; then
        log "${name}: not started: '${before_each} ${config}' failed"; rc[$name]=skipped; continue
    fi
    : > "$logdir/${name}.log"
    t_start[$name]=$SECONDS
    start "$name"
    log "${name}: started (stage 4 on), log ${logdir}/${name}.log"
done
while :; do
    alive=0
    for name in "${!pid[@]}"; do
        [[ -z ${rc[$name]:-} ]] || continue
        if kill -0 "${pid[$name]}" 2>/dev/null; then
            alive=1; stop_if_due "$name"
        elif wait "${pid[$name]}"; then rc[$name]=0
        else rc[$name]=$?; fi
    done
    ((alive)) || break
    sleep 2
done
wait "${followers[@]}" 2>/dev/null || true  # the last progress lines

# the table over every model of ${expdir}: each run's stage 6 wrote it with the models scored by
# then; stage 6 once more (one model's scoring, seconds) writes it over all of them
for name in "${names[@]}"; do
    if [[ ${rc[$name]} == 0 ]]; then
        ./run.sh --stage 6 --stop_stage 6 --asr_config "conf/tuning/train_asr_${name}.yaml" \
            --nj "$per_nj" "${pass[@]}" > "$logdir/table.log" 2>&1 \
            || log "ERROR: stage 6 of ${name}, which writes the combined table, ended with an error" \
                   "(${logdir}/table.log)"
        log "all models (${expdir}/RESULTS.md):"; grep '^|' "${expdir}/RESULTS.md" >&2 || true
        break
    fi
done
failed=()
for name in "${names[@]}"; do
    log "${name}: exit ${rc[$name]:-?} ($(grep -h 'finished:' "$logdir/${name}.log" 2>/dev/null | tail -1 | sed 's/.*finished: //'))${stopped[$name]:+; trained ${stopped[$name]} epochs (--train_minutes ${train_minutes})}"
    [[ ${rc[$name]:-1} == 0 ]] || failed+=("$name")
done
log "comparison done in $((SECONDS - t0)) s"
((${#failed[@]} == 0)) || { log "ERROR: failed: ${failed[*]} (logs in ${logdir})"; exit 1; }
