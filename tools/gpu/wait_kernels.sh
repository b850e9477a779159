#!/usr/bin/env bash
# Wait for the kernel build that tools/gpu/offline_run.sh runs in the background
# (KERNELS_BACKGROUND=1), before a step that needs mamba-ssm and causal-conv1d.
#   bash tools/gpu/wait_kernels.sh [CONFIG.yaml]
# With a training config that uses none of espnet-mamba's models (e.g. ESPnet's Conformer), it
# returns at once.  Exit status 0 when the kernels are installed (or no background build runs:
# ESPNET_MAMBA_KERNELS_STATUS unset), 1 when the build failed (the end of its log is printed).
set -euo pipefail
status=${ESPNET_MAMBA_KERNELS_STATUS:-}
[[ -n $status ]] || exit 0
if [[ $# -ge 1 ]]; then
    [[ -f $1 ]] || { echo "wait_kernels.sh: no config $1" >&2; exit 2; }
    grep -Eq '^(encoder|decoder): *(samba_asr|speech_mamba)' "$1" || exit 0
fi
t0=$SECONDS
until [[ -s $status ]]; do sleep 2; done
if [[ $(cat "$status") == ok ]]; then
    echo "[wait_kernels] kernels ready (waited $((SECONDS - t0)) s)" >&2
    exit 0
fi
echo "[wait_kernels] the kernel build failed; the end of $(dirname "$status")/install.log:" >&2
tail -n 30 "$(dirname "$status")/install.log" >&2 || true
exit 1
