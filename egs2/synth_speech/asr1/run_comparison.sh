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
#   --skip_prepare true   start at stage 4
#   --before_each CMD     run `CMD CONFIG_FILE` before each config starts (e.g. a wait for
#                         something that config needs); a failure skips that config
# Logs: exp/comparison/<name>.log (each run.sh's whole output); the lines that report
# progress (stages, epochs, results) are printed here with the name in front.
# Exit status: 0 if every config ran through, else 1 (the failed ones are named).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

configs="conformer samba_asr speech_mamba"
nj=$(nproc 2>/dev/null || echo 2)
skip_prepare=false
before_each=
expdir=exp
pass=()
while (($#)); do
    case $1 in
        --configs) configs=$2; shift 2 ;;
        --nj) nj=$2; shift 2 ;;
        --skip_prepare) skip_prepare=$2; shift 2 ;;
        --before_each) before_each=$2; shift 2 ;;
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
declare -A pid=() rc=()
followers=()
for name in "${names[@]}"; do
    config=conf/tuning/train_asr_${name}.yaml
    if [[ -n $before_each ]] && ! $before_each "$config"; then
        log "${name}: not started: '${before_each} ${config}' failed"; rc[$name]=skipped; continue
    fi
    : > "$logdir/${name}.log"
    ./run.sh --stage 4 --asr_config "$config" --nj "$per_nj" "${pass[@]}" > "$logdir/${name}.log" 2>&1 &
    pid[$name]=$!
    # the progress lines, with the config's name in front (tail ends with the run)
    tail -n +1 -F --pid="${pid[$name]}" "$logdir/${name}.log" 2>/dev/null | grep --line-buffered -E \
        '=== stage|epoch: train|valid |decode: |^\| *test|packed:|ERROR|finished:' \
        | sed -u "s/^/[${name}] /" >&2 &
    followers+=($!)
    log "${name}: started (stage 4 on), log ${logdir}/${name}.log"
done
for name in "${!pid[@]}"; do
    if wait "${pid[$name]}"; then rc[$name]=0; else rc[$name]=$?; fi
done
wait "${followers[@]}" 2>/dev/null || true  # the last progress lines

# the table over every model of ${expdir}: each run's stage 6 wrote it with the models scored by
# then; stage 6 once more (one model's scoring, seconds) writes it over all of them
for name in "${names[@]}"; do
    if [[ ${rc[$name]} == 0 ]]; then
        ./run.sh --stage 6 --stop_stage 6 --asr_config "conf/tuning/train_asr_${name}.yaml" \
            --nj "$per_nj" "${pass[@]}" > "$logdir/table.log" 2>&1 \
            || log "ERROR: the combined table failed (${logdir}/table.log)"
        log "all models (${expdir}/RESULTS.md):"; grep '^|' "${expdir}/RESULTS.md" >&2 || true
        break
    fi
done
failed=()
for name in "${names[@]}"; do
    log "${name}: exit ${rc[$name]:-?} ($(grep -h 'finished:' "$logdir/${name}.log" 2>/dev/null | tail -1 | sed 's/.*finished: //'))"
    [[ ${rc[$name]:-1} == 0 ]] || failed+=("$name")
done
log "comparison done in $((SECONDS - t0)) s"
((${#failed[@]} == 0)) || { log "ERROR: failed: ${failed[*]} (logs in ${logdir})"; exit 1; }
