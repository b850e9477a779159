# shellcheck shell=bash
# Options of run.sh (librispeech and librispeech_100) that depend on the corpus on disk.
#   librispeech_run_options TRAIN_SET TRAIN_PARTS CALLER_DIR    (after espnet_mamba_setup)
# Takes --librispeech DIR and --local_data_opts OPTS out of asr_args (DIR relative to
# CALLER_DIR; default: LIBRISPEECH of db.sh) and sets
#   local_data_opts  for local/data.sh: --librispeech DIR --train_set ... --train_parts ..., OPTS
#   test_sets        test_clean test_other dev_clean dev_other, less those not on disk (neither
#                    the corpus part nor data/<set>), so that a partial corpus runs
#   lm_text          data/local/other_text/text if you put librispeech-lm-norm.txt.gz (or that
#                    text) in data/local/other_text, else empty: then asr.sh's LM, if any, is
#                    trained on the training transcripts only
librispeech_run_options() {
    local train_set=$1 train_parts=$2 caller_dir=$3
    local root= user_opts= rest=() i=0
    while [ $i -lt ${#asr_args[@]} ]; do
        case ${asr_args[i]} in
            --librispeech)
                root=${asr_args[i + 1]:?--librispeech needs a directory}
                i=$((i + 2)) ;;
            --local_data_opts | --local-data-opts)
                user_opts=${asr_args[i + 1]:-}
                i=$((i + 2)) ;;
            *)
                rest+=("${asr_args[i]}")
                i=$((i + 1)) ;;
        esac
    done
    asr_args=("${rest[@]}")
    if [ -n "${root}" ]; then
        [[ ${root} == /* ]] || root=${caller_dir}/${root}
        [ -d "${root}" ] || espnet_mamba_die "--librispeech ${root}: no such directory"
        root=$(cd "${root}" && pwd)
        # asr.sh word-splits --local_data_opts
        [[ ${root} != *[[:space:]]* ]] || espnet_mamba_die "--librispeech '${root}': a path" \
            "with white space cannot pass through asr.sh; link the corpus to another path"
    fi
    local_data_opts="--train_set ${train_set} --train_parts ${train_parts}"
    local_data_opts+="${root:+ --librispeech ${root}}${user_opts:+ ${user_opts}}"

    local corpus set present=() absent=()
    # shellcheck disable=SC1091
    . ./db.sh
    . local/librispeech_dir.sh
    corpus=$(librispeech_dir "${root:-${LIBRISPEECH:-downloads}}")
    for set in test_clean test_other dev_clean dev_other; do
        if [ -d "${corpus}/${set//_/-}" ] || [ -f "data/${set}/wav.scp" ]; then
            present+=("${set}")
        else
            absent+=("${set}")
        fi
    done
    if [ ${#present[@]} -eq 0 ]; then  # nothing found: local/data.sh will say where it looked
        test_sets="test_clean test_other dev_clean dev_other"
    else
        test_sets="${present[*]}"
        [ ${#absent[@]} -eq 0 ] || echo "run.sh: not in ${corpus}, not decoded: ${absent[*]}" >&2
    fi

    lm_text=
    if [ -f data/local/other_text/librispeech-lm-norm.txt.gz ] \
        || [ -s data/local/other_text/text ]; then
        lm_text=data/local/other_text/text
    fi
}
