# shellcheck shell=bash
# Shared by egs2/<corpus>/asr1/run.sh: find the user's ESPnet checkout (a git clone, or the
# source distribution that tools/fetch_espnet_recipes.sh brings) and link its recipe machinery
# into the recipe directory, the way ESPnet's own recipes link egs2/TEMPLATE/asr1.
#
#   . ../../espnet_root.sh
#   espnet_mamba_setup <corpus> "$@"    # recipes that use ESPnet's egs2/<corpus>/asr1/local
#   espnet_mamba_setup --own_local "$@" # recipes that ship their own local/ (librispeech*)
#   espnet_mamba_asr ... "${asr_args[@]}"   # instead of ./asr.sh: see there
#
# espnet_mamba_setup
#   * takes --espnet_root DIR (or --espnet_root=DIR, --espnet-root ...) out of the arguments, else
#     uses $ESPNET_ROOT; exports ESPNET_ROOT (path.sh reads it);
#   * checks that DIR/egs2/TEMPLATE/asr1/asr.sh (and DIR/egs2/<corpus>/asr1/local) exist;
#   * links (never copies) into the current directory:
#       asr.sh utils steps pyscripts scripts db.sh cmd.sh  ->  DIR/egs2/TEMPLATE/asr1/<name>
#       local                                              ->  DIR/egs2/<corpus>/asr1/local
#     (local only with <corpus>).  A link of ours is re-pointed when the checkout changes; a real
#     file or directory of that name (e.g. your own db.sh or cmd.sh) is yours and is left alone;
#   * leaves every other argument, unchanged and in order, in the array asr_args.
# path.sh is not linked here: each recipe's path.sh is a link to ../../espnet_path.sh (see there
# why ESPnet's own TEMPLATE path.sh cannot be used from outside the checkout as it is).

ESPNET_MAMBA_EGS2=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

espnet_mamba_die() {
    echo "$(basename "$0"): error: $*" >&2
    exit 1
}

espnet_mamba_link() {  # espnet_mamba_link TARGET NAME
    local target=$1 name=$2
    if [ -L "${name}" ]; then
        [ "$(readlink "${name}")" = "${target}" ] && return 0
        rm -f "${name}"
    elif [ -e "${name}" ]; then
        echo "$(basename "$0"): keeping your own ${PWD}/${name} (not linking ${target})" >&2
        return 0
    fi
    ln -s "${target}" "${name}"
}

espnet_mamba_setup() {
    local corpus=$1
    shift
    [ "${corpus}" = --own_local ] && corpus=
    local root=${ESPNET_ROOT:-} from="ESPNET_ROOT"
    asr_args=()
    while [ $# -gt 0 ]; do
        case $1 in
            --espnet_root | --espnet-root)
                [ $# -ge 2 ] || espnet_mamba_die "$1 needs a directory"
                root=$2 from="--espnet_root"
                shift 2
                ;;
            --espnet_root=* | --espnet-root=*)
                root=${1#*=} from="--espnet_root"
                shift
                ;;
            *)
                asr_args+=("$1")
                shift
                ;;
        esac
    done

    if [ -z "${root}" ]; then
        espnet_mamba_die "no ESPnet checkout given: pass --espnet_root /path/to/espnet or set" \
            "ESPNET_ROOT=/path/to/espnet (a git clone of https://github.com/espnet/espnet, or" \
            "the directory that 'bash tools/fetch_espnet_recipes.sh' of this repository prints;" \
            "the pip package has no recipe scripts)"
    fi
    [ -d "${root}" ] || espnet_mamba_die "${from}=${root}: no such directory"
    root=$(cd "${root}" && pwd -P)
    local template=${root}/egs2/TEMPLATE/asr1
    [ -f "${template}/asr.sh" ] || espnet_mamba_die "${from}=${root} is not an ESPnet git" \
        "checkout: ${template}/asr.sh is missing (set --espnet_root or ESPNET_ROOT to the top" \
        "of a clone of https://github.com/espnet/espnet, or to what tools/fetch_espnet_recipes.sh" \
        "prints)"
    local corpus_local=
    if [ -n "${corpus}" ]; then
        corpus_local=${root}/egs2/${corpus}/asr1/local
        [ -d "${corpus_local}" ] || espnet_mamba_die "${corpus_local} is missing: this recipe" \
            "reuses the data preparation of ESPnet's own egs2/${corpus}/asr1 (update your checkout?)"
    fi

    export ESPNET_ROOT=${root}
    local name
    for name in asr.sh utils steps pyscripts scripts db.sh cmd.sh; do
        if [ -e "${template}/${name}" ] || [ -L "${template}/${name}" ]; then
            espnet_mamba_link "${template}/${name}" "${name}"
        fi
    done
    [ -z "${corpus_local}" ] || espnet_mamba_link "${corpus_local}" local
}

# espnet_mamba_asr ARGS...: ./asr.sh ARGS..., and then RESULTS.md names the right software.
# asr.sh's stage 13 writes RESULTS.md with `git rev-parse HEAD` of the recipe directory (here:
# this repository, not ESPnet) and stage 14 packs it (stage 15 puts it on the Hugging Face card).
# So when a run spans stages 13 and 14 it is split there: asr.sh ... --stop_stage 13, then
# ../../results_versions.py rewrites that section of each new RESULTS.md, then asr.sh ...
# --stage 14.  The overriding option comes last (asr.sh's last value of an option wins).
espnet_mamba_asr() {
    local stage=1 stop_stage=10000 expdir=exp asr_exp= python=python3 i name
    local args=("$@")
    for ((i = 0; i + 1 < ${#args[@]}; i++)); do  # asr.sh takes --name value (never --name=value)
        name=${args[i]//-/_}
        case ${name} in
            __stage) stage=${args[i + 1]} ;;
            __stop_stage) stop_stage=${args[i + 1]} ;;
            __expdir) expdir=${args[i + 1]} ;;
            __asr_exp) asr_exp=${args[i + 1]} ;;
            __python) python=${args[i + 1]} ;;
        esac
    done
    if [ "${stage}" -gt 13 ] || [ "${stop_stage}" -lt 13 ]; then
        ./asr.sh "$@"
        return
    fi
    local marker
    marker=$(mktemp)
    # shellcheck disable=SC2064
    trap "rm -f '${marker}'" EXIT
    if [ "${stop_stage}" -ge 14 ]; then
        ./asr.sh "$@" --stop_stage 13
    else
        ./asr.sh "$@"
    fi
    local results=()
    mapfile -t results < <(find "${expdir}" ${asr_exp:+"${asr_exp}"} -name RESULTS.md \
        -newer "${marker}" 2>/dev/null | sort -u)
    if [ ${#results[@]} -gt 0 ]; then
        # path.sh: the Python environment asr.sh used (ESPnet's tools/ may activate one)
        (. ./path.sh && "${python}" "${ESPNET_MAMBA_EGS2}/results_versions.py" "${results[@]}")
    fi
    if [ "${stop_stage}" -ge 14 ]; then
        ./asr.sh "$@" --stage 14
    fi
}
