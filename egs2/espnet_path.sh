# shellcheck shell=bash
# path.sh of the recipes in this repository (each egs2/<corpus>/asr1/path.sh links here).
#
# ESPnet's egs2/TEMPLATE/asr1/path.sh finds its checkout as MAIN_ROOT=$PWD/../../.., which holds
# only for recipes inside the checkout.  We source that same file, unchanged, with PWD pointing
# into the checkout's TEMPLATE/asr1 while it runs: PWD is the shell variable it reads; the working
# directory itself does not change, so its closing `. local/path.sh` still reads this recipe's
# local/ (a link to the checkout's egs2/<corpus>/asr1/local).  ESPNET_ROOT is exported by run.sh.
if [ -z "${ESPNET_ROOT:-}" ]; then
    echo "path.sh: ESPNET_ROOT is not set; start this recipe with ./run.sh --espnet_root" \
        "/path/to/espnet (or export ESPNET_ROOT)" >&2
    return 1 2>/dev/null || exit 1
fi
_espnet_mamba_pwd=${PWD}
PWD=${ESPNET_ROOT}/egs2/TEMPLATE/asr1
# shellcheck disable=SC1091
. "${ESPNET_ROOT}/egs2/TEMPLATE/asr1/path.sh"
PWD=${_espnet_mamba_pwd}
unset _espnet_mamba_pwd
