# shellcheck shell=bash
# Shared by egs2/<corpus>/asr1/run.sh: find the user's ESPnet git checkout and link its recipe
# machinery into the recipe directory, the way ESPnet's own recipes link egs2/TEMPLATE/asr1.
#
#   . ../../espnet_root.sh
#   espnet_mamba_setup <corpus> "$@"    # then: ./asr.sh ... "${asr_args[@]}"
#
# espnet_mamba_setup
#   * takes --espnet_root DIR (or --espnet_root=DIR, --espnet-root ...) out of the arguments, else
#     uses $ESPNET_ROOT; exports ESPNET_ROOT (path.sh reads it);
#   * checks that DIR/egs2/TEMPLATE/asr1/asr.sh and DIR/egs2/<corpus>/asr1/local exist;
#   * links (never copies) into the current directory:
#       asr.sh utils steps pyscripts scripts db.sh cmd.sh  ->  DIR/egs2/TEMPLATE/asr1/<name>
#       local                                              ->  DIR/egs2/<corpus>/asr1/local
#     A link of ours is re-pointed when the checkout changes; a real file or directory of that
#     name (e.g. your own db.sh or cmd.sh) is yours and is left alone;
#   * leaves every other argument, unchanged and in order, in the array asr_args.
# path.sh is not linked here: each recipe's path.sh is a link to ../../espnet_path.sh (see there
# why ESPnet's own TEMPLATE path.sh cannot be used from outside the checkout as it is).

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
            "ESPNET_ROOT=/path/to/espnet (a git clone of https://github.com/espnet/espnet with" \
            "its tools/ installed; the pip package has no recipe scripts)"
    fi
    [ -d "${root}" ] || espnet_mamba_die "${from}=${root}: no such directory"
    root=$(cd "${root}" && pwd -P)
    local template=${root}/egs2/TEMPLATE/asr1
    [ -f "${template}/asr.sh" ] || espnet_mamba_die "${from}=${root} is not an ESPnet git" \
        "checkout: ${template}/asr.sh is missing (set --espnet_root or ESPNET_ROOT to the top" \
        "of a clone of https://github.com/espnet/espnet)"
    local corpus_local=${root}/egs2/${corpus}/asr1/local
    [ -d "${corpus_local}" ] || espnet_mamba_die "${corpus_local} is missing: this recipe" \
        "reuses the data preparation of ESPnet's own egs2/${corpus}/asr1 (update your checkout?)"

    export ESPNET_ROOT=${root}
    local name
    for name in asr.sh utils steps pyscripts scripts db.sh cmd.sh; do
        if [ -e "${template}/${name}" ] || [ -L "${template}/${name}" ]; then
            espnet_mamba_link "${template}/${name}" "${name}"
        fi
    done
    espnet_mamba_link "${corpus_local}" local
}
