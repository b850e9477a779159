#!/usr/bin/env bash
# Wait for the kernel build that tools/gpu/offline_run.sh runs in the background
# (KERNELS_BACKGROUND=1), before a step that needs mamba-ssm and causal-conv1d.
#   bash tools/gpu/wait_kernels.sh [CONFIG.yaml]
# With a training config whose encoder and decoder are none of the ones this package registers
# (espnet_mamba/integration/names.py; e.g. ESPnet's Conformer), it returns at once.
# Exit status 0 when the kernels are installed (or no background build runs:
# ESPNET_MAMBA_KERNELS_STATUS unset), 1 when the build failed (the end of its log is printed) or
# has not ended after ESPNET_MAMBA_KERNELS_WAIT_S seconds (default 1800), 2 for a config that
# is missing or cannot be read.
set -euo pipefail
status=${ESPNET_MAMBA_KERNELS_STATUS:-}
[[ -n $status ]] || exit 0
if [[ $# -ge 1 ]]; then
    [[ -f $1 ]] || { echo "wait_kernels.sh: no config $1" >&2; exit 2; }
    rc=0
    python3 - "$1" <<'PY' || rc=$?
import sys
import yaml
from espnet_mamba.integration.names import DECODERS, ENCODERS
cfg = yaml.safe_load(open(sys.argv[1])) or {}
sys.exit(0 if cfg.get("encoder") in ENCODERS or cfg.get("decoder") in DECODERS else 3)
PY
    case $rc in
        0) ;;         # a model of this package: wait
        3) exit 0 ;;  # none: no kernels needed
        *) echo "wait_kernels.sh: cannot read the model names of $1 (above)" >&2; exit 2 ;;
    esac
fi
t0=$SECONDS limit=${ESPNET_MAMBA_KERNELS_WAIT_S:-1800}
until [[ -s $status ]]; do
    if ((SECONDS - t0 >= limit)); then
        echo "[wait_kernels] the kernel build has not ended after ${limit} s" \
            "(ESPNET_MAMBA_KERNELS_WAIT_S); its log: $(dirname "$status")/install.log" >&2
        exit 1
    fi
    sleep 2
done
if [[ $(cat "$status") == ok ]]; then
    echo "[wait_kernels] kernels ready (waited $((SECONDS - t0)) s)" >&2
    exit 0
fi
echo "[wait_kernels] the kernel build failed; the end of $(dirname "$status")/install.log:" >&2
tail -n 30 "$(dirname "$status")/install.log" >&2 || true
exit 1
