# shellcheck shell=bash
# path.sh of the recipes in this repository (each egs2/<corpus>/asr1/path.sh links here).
#
# ESPnet's egs2/TEMPLATE/asr1/path.sh finds its checkout as MAIN_ROOT=$PWD/../../.., which holds
# only for recipes inside the checkout.  We source that same file, unchanged, with PWD pointing
# into the checkout's TEMPLATE/asr1 while it runs: PWD is the shell variable it reads; the working
# directory itself does not change, so its closing `. local/path.sh` still reads this recipe's
# local/ (ours, or a link to the checkout's egs2/<corpus>/asr1/local).  ESPNET_ROOT is exported
# by run.sh.
# asr.sh scores with sclite.  ESPnet's tools/ builds it into tools/sctk/bin (on PATH through the
# TEMPLATE path.sh); a source distribution has no build, and Debian's sctk package (installed by
# tools/install_recipe_deps.sh) keeps it off PATH in /usr/lib/sctk/bin: add that directory.
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
if ! command -v sclite >/dev/null 2>&1 && [ -x /usr/lib/sctk/bin/sclite ]; then
    export PATH=${PATH}:/usr/lib/sctk/bin
fi
