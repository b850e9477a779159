#!/usr/bin/env bash
# Build and install the CUDA kernels of causal-conv1d and mamba-ssm from their sdists, offline,
# for the local GPU's architecture only, against the torch already installed.
#
# Why: PyPI has only sdists of both; their setup.py tries to download a prebuilt wheel from GitHub
# first (fails offline: *_FORCE_BUILD=TRUE skips it) and compiles for ~10 architectures (our copy
# of setup.py is patched to compile for this GPU's only: minutes instead of an hour). Build with
# --no-build-isolation --no-deps: the build needs the installed torch, and their declared
# dependencies would pull triton, tilelang, transformers, ...
#
# Usage: tools/build_kernels.sh [--sdist-dir DIR] [--wheel-dir DIR] [--target DIR] [--no-install]
#                               [--arch 90] [--jobs N] [--skip NAME] [--dry-run]
#   --sdist-dir DIR  folder with mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz (default .gpu/sdist)
#   --wheel-dir DIR  where wheels, build logs and build_times.txt go (default /tmp/espnet_mamba_kernels);
#                    wheels already there for this torch/CUDA/arch are reused, not rebuilt
#   --target DIR     pip install --target DIR instead of into the interpreter's site-packages
#   --no-install     build only
#   --arch CC        compute capability without the dot (90, 90a, 100...); default: the local GPU's
#   --jobs N         MAX_JOBS for each of the two parallel builds (default: nproc)
#   --skip NAME      neither build nor install NAME (mamba_ssm or causal_conv1d): it is installed
#                    already, e.g. from tools/gpu/export_kernels.sh's archive of an earlier machine
#   --dry-run        unpack and patch, print the patched arch lines and the commands; build nothing
# Env: PYTHON (default python3), the interpreter whose torch the kernels are built against.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
SDIST_DIR=$ROOT/.gpu/sdist WHEEL_DIR=/tmp/espnet_mamba_kernels TARGET="" INSTALL=1
ARCH="" JOBS=$(nproc) DRY=0
NAMES=(mamba_ssm causal_conv1d)
while (($#)); do
    case $1 in
        --sdist-dir) SDIST_DIR=$2; shift 2 ;;
        --wheel-dir) WHEEL_DIR=$2; shift 2 ;;
        --target) TARGET=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --arch) ARCH=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --skip) [[ " ${NAMES[*]} " == *" $2 "* ]] || { echo "--skip: not one of ${NAMES[*]}: $2" >&2; exit 2; }
                kept=(); for n in "${NAMES[@]}"; do [[ $n == "$2" ]] || kept+=("$n"); done
                NAMES=("${kept[@]}"); shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
say() { echo "[build_kernels] $*"; }
die() { echo "[build_kernels] ERROR: $*" >&2; exit 1; }
run() { echo "+ $*"; ((DRY)) || "$@"; }

# --- sources --------------------------------------------------------------------------------
shopt -s nullglob
declare -A SDIST
((${#NAMES[@]})) || { say "nothing to build (both skipped)"; exit 0; }
for name in "${NAMES[@]}"; do
    files=("$SDIST_DIR"/"$name"-*.tar.gz)
    if ((${#files[@]} != 1)); then
        say "need exactly one $name-*.tar.gz in $SDIST_DIR, found ${#files[@]}."
        say "With network, fetch them first (setup.py imports torch, hence the flags):"
        say "  MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE $PY -m pip download \\"
        say "    --no-deps --no-binary :all: --no-build-isolation -d $SDIST_DIR \\"
        say "    mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0"
        exit 1
    fi
    SDIST[$name]=${files[0]}
done

# --- torch, CUDA and the GPU's architecture -------------------------------------------------
read -r TORCH_V CUDA_V GPU_CC < <("$PY" - <<'EOF'
import torch
cc = "%d%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "none"
print(torch.__version__.split("+")[0], torch.version.cuda or "none", cc)
EOF
) || die "$PY cannot import torch"
[[ $CUDA_V != none ]] || ((DRY)) || die "torch $TORCH_V is not a CUDA build"
if [[ -z $ARCH ]]; then
    if [[ $GPU_CC != none ]]; then ARCH=$GPU_CC
    elif ((DRY)); then ARCH=90; say "no GPU visible: dry run assumes --arch 90 (H100/H200)"
    else die "no GPU visible to torch; pass --arch (e.g. 90 for H100/H200)"; fi
fi
[[ $ARCH =~ ^[0-9]+[0-9][a-z]?$ ]] || die "--arch '$ARCH' is not like 90, 90a or 100"
# The local version label names what the wheels were built for, so a later call can tell
# whether wheels lying in --wheel-dir fit this machine: e.g. 2.3.2.post1+pt2110.cu130.sm90
LOCAL="pt${TORCH_V//./}.cu${CUDA_V//./}.sm$ARCH"
say "torch $TORCH_V, CUDA $CUDA_V, GPU compute capability $GPU_CC, building for sm_$ARCH ($LOCAL)"

declare -A WHEEL
want_wheel() {  # $1 = name: the wheel for this LOCAL label, if there
    local ver; ver=$(basename "${SDIST[$1]}" .tar.gz); ver=${ver#"$1"-}
    local w=("$WHEEL_DIR/$1-$ver+$LOCAL"-*.whl)
    ((${#w[@]})) && echo "${w[0]}" || true
}
have_all() {  # every package to build has its wheel
    local name
    for name in "${NAMES[@]}"; do WHEEL[$name]=$(want_wheel "$name"); [[ -n ${WHEEL[$name]} ]] || return 1; done
}

# --- build (both at once; causal-conv1d's two big files split by dtype, mamba-ssm's are already) -
if have_all; then
    say "reusing wheels already in $WHEEL_DIR for $LOCAL"
else
    ((DRY)) || command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] \
        || die "nvcc not found (PATH or /usr/local/cuda): the CUDA toolkit is needed to build"
    TMP=$(mktemp -d /tmp/build_kernels.XXXXXX)
    trap 'rm -rf "$TMP"' EXIT
    ((DRY)) || mkdir -p "$WHEEL_DIR"
    for name in "${NAMES[@]}"; do
        tar -xzf "${SDIST[$name]}" -C "$TMP"
        src=$(echo "$TMP/$name"-*/)
        # Patch this temporary copy only: no env var selects the arch (cc_flag is hard-coded, and
        # TORCH_CUDA_ARCH_LIST is ignored once -gencode flags are given). Every `-gencode` append
        # becomes `pass` (keeps the `if bare_metal_version >= ...:` blocks valid) and one pair for
        # our arch is inserted where the first one was.
        "$PY" - "$src/setup.py" "$ARCH" <<'EOF'
import re, sys
path, arch = sys.argv[1], sys.argv[2]
lines = open(path).read().split("\n")
pat = re.compile(r'^(\s*)cc_flag\.append\("(-gencode|arch=compute_[0-9a-z]+,code=sm_[0-9a-z]+)"\)\s*$')
hits = [i for i, l in enumerate(lines) if pat.match(l)]
if len(hits) < 2:
    sys.exit(f"{path}: found no cc_flag -gencode lines to patch; setup.py changed?")
indent = pat.match(lines[hits[0]]).group(1)
for i in hits:
    lines[i] = pat.match(lines[i]).group(1) + "pass  # patched out by build_kernels.sh"
lines[hits[0]:hits[0]] = [f'{indent}cc_flag += ["-gencode", "arch=compute_{arch},code=sm_{arch}"]'
                          "  # build_kernels.sh: this GPU only"]
text = "\n".join(lines)
compile(text, path, "exec")
open(path, "w").write(text)
EOF
        say "$name: $(grep -c 'patched out' "$src/setup.py") -gencode lines patched out of" \
            "$(basename "$src")/setup.py, now:"
        grep -n -F 'cc_flag +=' "$src/setup.py" | sed 's/^/    /'
        if [[ $name == causal_conv1d ]]; then
            # its forward and backward kernels, every dtype pair, are one file each: split per
            # dtype pair so that the build runs them side by side (the same code, compiled once)
            "$PY" "$ROOT/tools/split_cuda_instantiations.py" "$src" \
                csrc/causal_conv1d_fwd.cu csrc/causal_conv1d_bwd.cu | sed "s/^/    $name: /"
        fi
    done

    num=${ARCH%[a-z]}  # TORCH_CUDA_ARCH_LIST spells 90a as 9.0a; set it too, for consistency
    ENVS=(MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE "MAX_JOBS=$JOBS"
          TORCH_CUDA_ARCH_LIST="${num:0:-1}.${num: -1}${ARCH#"$num"}"
          "MAMBA_LOCAL_VERSION=$LOCAL" "CAUSAL_CONV1D_LOCAL_VERSION=$LOCAL")
    build_one() {  # $1 = name; runs in the background, times itself, logs to the wheel dir
        local name=$1 src t0 rc=0
        src=$(echo "$TMP/$name"-*/)
        t0=$(date +%s)
        env "${ENVS[@]}" "$PY" -m pip wheel -v --no-build-isolation --no-deps --no-index \
            --no-cache-dir -w "$WHEEL_DIR" "$src" >"$WHEEL_DIR/build-$name.log" 2>&1 || rc=$?
        echo "$name $(($(date +%s) - t0)) s, exit $rc" >"$TMP/time-$name"
        return $rc
    }
    for name in "${NAMES[@]}"; do
        echo "+ env ${ENVS[*]} $PY -m pip wheel -v --no-build-isolation --no-deps --no-index" \
             "--no-cache-dir -w $WHEEL_DIR $TMP/$name-*/ > $WHEEL_DIR/build-$name.log 2>&1 &"
    done
    if ((DRY)); then
        say "dry run: nothing built"
    else
        say "building ${NAMES[*]} in parallel, MAX_JOBS=$JOBS each; logs: $WHEEL_DIR/build-*.log"
        t0=$(date +%s)
        declare -A PID
        for name in "${NAMES[@]}"; do build_one "$name" & PID[$name]=$!; done
        failed=0
        for name in "${NAMES[@]}"; do
            wait "${PID[$name]}" && continue
            failed=1; say "$name FAILED; end of its log:"; tail -40 "$WHEEL_DIR/build-$name.log"
        done
        { echo "# $(date -u +%FT%TZ) sm_$ARCH torch $TORCH_V CUDA $CUDA_V MAX_JOBS=$JOBS nproc=$(nproc), in parallel"
          for name in "${NAMES[@]}"; do cat "$TMP/time-$name"; done
          echo "all: $(($(date +%s) - t0)) s wall"; } >"$WHEEL_DIR/build_times.txt"
        cat "$WHEEL_DIR/build_times.txt"
        ((failed == 0)) || die "kernel build failed"
        have_all || die "pip reported success but no wheel named *+$LOCAL-* is in $WHEEL_DIR"
    fi
fi

# --- install ---------------------------------------------------------------------------------
if ((INSTALL)); then
    ws=()
    for name in "${NAMES[@]}"; do ws+=("${WHEEL[$name]:-$WHEEL_DIR/$name-...whl}"); done
    # --upgrade: with --target, pip otherwise keeps what a previous call put there.
    if [[ -n $TARGET ]]; then where=(--target "$TARGET" --upgrade); else where=(--force-reinstall); fi
    run "$PY" -m pip install -q --no-deps --no-index --no-compile "${where[@]}" "${ws[@]}"
fi
((DRY)) || ls -l "$WHEEL_DIR"/*.whl
say "done"
