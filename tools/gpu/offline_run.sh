#!/usr/bin/env bash
# Set up a GPU machine without network access from the bundle in .gpu/, then run a command:
#   bash tools/gpu/offline_run.sh COMMAND [ARG...]     (from anywhere; it runs in the repo root)
# e.g. bash tools/gpu/offline_run.sh bash tools/gpu/gpu_tests.sh
# .gpu/ is made by tools/gpu/fetch_packages.sh on a machine with PyPI and copied along with the
# repository (tools/gpu/README.md).  Stages: install the bundled wheels into /tmp/site (on
# PYTHONPATH), install prebuilt kernels from .gpu/kernels where they fit this GPU and torch,
# build the others from .gpu/sdist (tools/build_kernels.sh, both in parallel: mamba-ssm ~2.2 min,
# causal-conv1d ~1.3 min with its sources split by dtype), install this repository, print
# the versions, run COMMAND.
# Everything is also logged to $OUT/offline_run.log if OUT is set.
# Exit status: COMMAND's; 3 if COMMAND passed but the kernels could not be built.
# Env: SKIP_KERNELS=1 skips the kernel build, for runs that need only the pure-PyTorch path;
# KERNELS_BACKGROUND=1 builds them while COMMAND runs (COMMAND's steps that need them wait with
# tools/gpu/wait_kernels.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
SITE=/tmp/site
SITE_KERNELS=/tmp/site_kernels  # KERNELS_BACKGROUND=1 only
KERNEL_DIR=/tmp/espnet_mamba_kernels
export PYTHONUNBUFFERED=1
# mamba-ssm's Triton kernels (Mamba2, layer norm) autotune in each new process: with Triton's
# disk cache of the timings, a later process (a decoding job) reuses them for the kernels and
# shapes already tuned
export TRITON_CACHE_AUTOTUNING=${TRITON_CACHE_AUTOTUNING:-1}
if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/offline_run.log") 2>&1
    TEE_PID=$!
fi
stage() { echo; echo "=== [$(date -u +%H:%M:%S) +${SECONDS}s] $*"; }
die() { echo "=== ERROR: $*" >&2; exit 1; }
on_exit() {
    [[ -n ${OUT:-} ]] || return 0
    if [[ -f $KERNEL_DIR/build_times.txt ]]; then cp "$KERNEL_DIR/build_times.txt" "$OUT/"; fi
    exec >&- 2>&-; wait "$TEE_PID" 2>/dev/null || true  # let tee finish the log
}
trap on_exit EXIT

stage "machine"
nvidia-smi -L || echo "(no nvidia-smi)"
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
            "| cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
echo "nproc $(nproc) | nvcc: $(command -v nvcc || echo none)"

stage "install carried wheels into $SITE"
shopt -s nullglob
wheels=(.gpu/wheels/*.whl)
((${#wheels[@]})) || die "no .gpu/wheels/*.whl: run tools/gpu/fetch_packages.sh where PyPI is reachable and copy .gpu/ here"
# --no-compile: byte-code is written lazily on first import; --upgrade: a second run reuses /tmp/site.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "${wheels[@]}"
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
echo "${#wheels[@]} wheels installed; PYTHONPATH=$PYTHONPATH"
if [[ -f .gpu/tts/tts_prefix.tar.xz ]]; then
    # the speech synthesis tools of the synthetic-speech recipes (tools/gpu/fetch_tts.sh)
    stage "TTS engines from .gpu/tts"
    eval "$(python3 tools/tts_corpus.py --prefix_env .gpu/tts/tts_prefix.tar.xz)"
    espeak-ng --version | head -1
fi

install_kernels() {  # prebuilt archives from .gpu/kernels, else a build, into $KSITE; KERNELS_OK=1 or 0
    SKIP_BUILD=()
    if [[ ${SKIP_KERNELS:-0} != 1 ]] && compgen -G '.gpu/kernels/*.tar.xz' >/dev/null; then
        # built on an earlier machine (tools/gpu/export_kernels.sh): used if the label matches
        stage "prebuilt kernels from .gpu/kernels"
        label=$(python3 -c 'import torch; print("pt%s.cu%s.sm%d%d" % (torch.__version__.split("+")[0].replace(".", ""),
                torch.version.cuda.replace(".", ""), *torch.cuda.get_device_capability()))')
        for archive in .gpu/kernels/*.tar.xz; do
            name=$(basename "$archive" .tar.xz)
            unpacked=$(mktemp -d)
            tar -C "$unpacked" -xJf "$archive"  # the archive holds site/...
            built_for=$(cat "$unpacked/site/KERNEL_WHEELS.$name" 2>/dev/null || echo "?")
            if [[ $built_for != *"+$label-"* ]]; then
                echo "$name: prebuilt $built_for does not fit this machine ($label): building"
                continue
            fi
            cp -r "$unpacked"/site/. "$KSITE"/
            ext=$([[ $name == mamba_ssm ]] && echo selective_scan_cuda || echo causal_conv1d_cuda)
            if python3 -c "import torch, $ext"; then  # torch first: it loads libc10 for the extension
                echo "$name: prebuilt $built_for fits $label: not built"
                SKIP_BUILD+=(--skip "$name")
            else
                echo "$name: prebuilt $built_for does not import here: building"
            fi
        done
    fi
    if [[ ${SKIP_KERNELS:-0} == 1 ]]; then
        stage "kernels: not built (SKIP_KERNELS=1)"
    else
        stage "build + install mamba-ssm and causal-conv1d kernels"
        # A failed build does not stop here: the command still runs (the pure-PyTorch path can be
        # tested without the kernels), and the exit status says so.
        if bash tools/build_kernels.sh --sdist-dir .gpu/sdist --wheel-dir "$KERNEL_DIR" --target "$KSITE" \
            "${SKIP_BUILD[@]}" &&
            python3 -c 'import causal_conv1d, mamba_ssm, selective_scan_cuda, causal_conv1d_cuda; print("mamba_ssm", mamba_ssm.__version__, "| causal_conv1d", causal_conv1d.__version__, "import OK")'
        then KERNELS_OK=1
        else KERNELS_OK=0; echo "=== WARNING: kernels not available; continuing without them"; fi
    fi
}
if [[ ${KERNELS_BACKGROUND:-0} == 1 && ${SKIP_KERNELS:-0} != 1 ]]; then
    # the command starts at once; what needs the kernels waits for tools/gpu/wait_kernels.sh
    # (the status file says ok or failed when the build is over).  They are installed into a
    # folder of their own, renamed into place when complete: a process started before sees no
    # half-installed package (its PYTHONPATH entry does not exist yet), one started after sees all.
    mkdir -p "$KERNEL_DIR"; rm -rf "$KERNEL_DIR/status" "$SITE_KERNELS" "$SITE_KERNELS.partial"
    export ESPNET_MAMBA_KERNELS_STATUS=$KERNEL_DIR/status
    stage "kernels: built in the background (log $KERNEL_DIR/install.log)"
    ( KSITE=$SITE_KERNELS.partial; mkdir -p "$KSITE"; export PYTHONPATH=$KSITE:$PYTHONPATH
      install_kernels > "$KERNEL_DIR/install.log" 2>&1 || KERNELS_OK=0
      if [[ ${KERNELS_OK:-0} == 1 ]] && mv "$KSITE" "$SITE_KERNELS"; then echo ok; else echo failed; fi \
          > "$ESPNET_MAMBA_KERNELS_STATUS" ) &
    KERNELS_PID=$!
    export PYTHONPATH=$SITE_KERNELS:$PYTHONPATH
else
    KSITE=$SITE
    install_kernels
fi

stage "install this repo (espnet-mamba)"
# Into the interpreter's own site-packages, as a user would, not into $SITE: a .pth file there
# is honoured at start-up, while one in a PYTHONPATH folder is ignored. No network: build with
# the image's setuptools. If that fails, fall back to the source tree on PYTHONPATH.
if [[ -f setup.py || -f pyproject.toml ]] &&
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --force-reinstall .; then
    python3 -m pip show espnet-mamba 2>/dev/null | sed -n '1,2p' || true
else
    echo "=== WARNING: pip install of the repo failed or no setup.py; using PYTHONPATH=$PWD instead"
    export PYTHONPATH=$PWD:$PYTHONPATH
fi

stage "versions"
python3 - <<'EOF'
from importlib.metadata import version, PackageNotFoundError
for d in ["espnet", "espnet-mamba", "mamba-ssm", "causal-conv1d", "torch", "triton", "typeguard",
          "typing_extensions", "sentencepiece", "numpy"]:
    try:
        print(f"  {d:18s} {version(d)}")
    except PackageNotFoundError:
        print(f"  {d:18s} (not installed)")
EOF

rc=0
if (($#)); then
    stage "run: $*"
    "$@" || rc=$?
    stage "finished: exit $rc"
fi
if [[ -n ${KERNELS_PID:-} ]]; then
    wait "$KERNELS_PID" || true
    [[ $(cat "$ESPNET_MAMBA_KERNELS_STATUS" 2>/dev/null) == ok ]] || KERNELS_OK=0
fi
if [[ ${KERNELS_OK:-1} == 0 ]]; then
    stage "kernel build FAILED (see above)"
    ((rc)) || rc=3
fi
((rc == 0)) && stage "done"
exit "$rc"
