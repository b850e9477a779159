#!/usr/bin/env bash
# Bundle what a GPU machine without network needs, on a machine with PyPI (never on the GPU
# machine).  Fills the git-ignored folder .gpu/; copy it there with the repository:
#   .gpu/wheels/  wheels of the packages in tools/gpu/requirements-gpu.txt (ESPnet and the
#                 dependencies a Python 3.12 + torch 2.11 image lacks), for CPython 3.12 on
#                 x86-64 Linux, whatever Python runs pip here
#   .gpu/sdist/   sdists of mamba-ssm and causal-conv1d: their CUDA extensions are compiled for
#                 the GPU there (tools/build_kernels.sh, run by tools/gpu/offline_run.sh)
# Usage: tools/gpu/fetch_packages.sh
# Env:   TORCH_PYTHON  a Python with torch installed (default: .venv/bin/python), see below
#        MAX_MIB       fail if the bundle is larger (unset: no limit)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REQ=$ROOT/tools/gpu/requirements-gpu.txt
GPU_DIR=$ROOT/.gpu
TORCH_PY=${TORCH_PYTHON:-$ROOT/.venv/bin/python}
MAX_MIB=${MAX_MIB:-}
KERNEL_SDISTS=(mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0)

# Wheels for the GPU machine's interpreter, whatever Python runs pip here.
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

say() { echo "[fetch_packages] $*"; }
die() { echo "[fetch_packages] ERROR: $*" >&2; exit 1; }

# Read the list: `name==version` per line; a comment containing "build:" marks sdist-only ones.
binary=() build=()
while IFS= read -r line; do
    spec=${line%%#*}; spec=${spec//[[:space:]]/}
    [[ -z $spec ]] && continue
    [[ $spec == *==* ]] || die "unpinned line in $REQ: '$line'"
    if [[ $line == *"build:"* ]]; then build+=("$spec"); else binary+=("$spec"); fi
done <"$REQ"

# Download into fresh folders and swap at the end, so no stale version is left beside a new one
# (two versions of one package make `pip install *.whl` fail there).
mkdir -p "$GPU_DIR"
NEW=$(mktemp -d "$GPU_DIR/.new.XXXXXX")
trap 'rm -rf "$NEW"' EXIT
mkdir -p "$NEW/wheels" "$NEW/sdist" "$NEW/build"

say "downloading ${#binary[@]} wheels for cp312 manylinux x86_64"
python3 -m pip download -q --no-deps "${TARGET[@]}" -d "$NEW/wheels" "${binary[@]}"

for spec in "${build[@]}"; do
    say "building a wheel of $spec here (PyPI has only its sdist)"
    python3 -m pip wheel -q --no-deps --no-binary :all: -w "$NEW/build" "$spec"
done
for whl in "$NEW"/build/*.whl; do
    [[ -e $whl ]] || continue
    # A compiled wheel built here would be for this machine's Python, not the GPU's 3.12.
    [[ $whl == *-none-any.whl ]] || die "$(basename "$whl") is not pure Python: cannot build it here"
    mv "$whl" "$NEW/wheels/"
done

# pip prepares an sdist's metadata even with --no-deps, and both setup.py files `import torch`,
# so this step needs a Python that has torch; *_SKIP_CUDA_BUILD keeps it from wanting nvcc.
"$TORCH_PY" -c 'import torch' 2>/dev/null \
    || die "TORCH_PYTHON=$TORCH_PY cannot import torch (needed to read the kernel sdists' metadata)"
say "downloading sdists: ${KERNEL_SDISTS[*]}"
MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
    "$TORCH_PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation \
    -d "$NEW/sdist" "${KERNEL_SDISTS[@]}"

# Every listed package must have exactly one file.
n_expect=$(( ${#binary[@]} + ${#build[@]} ))
n_got=$(find "$NEW/wheels" -name '*.whl' | wc -l)
(( n_got == n_expect )) || die "expected $n_expect wheels, got $n_got"

rm -rf "$GPU_DIR/wheels" "$GPU_DIR/sdist"
mv "$NEW/wheels" "$NEW/sdist" "$GPU_DIR/"

say "contents of $GPU_DIR:"
(cd "$GPU_DIR" && find wheels sdist -type f -printf '%10s  %p\n' | sort -k2)
total=$(du -cb "$GPU_DIR/wheels" "$GPU_DIR/sdist" | tail -1 | cut -f1)
mib=$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')
say "total: $mib MiB ($total bytes)"
[[ -z $MAX_MIB ]] || (( total <= MAX_MIB * 1048576 )) || die "$mib MiB is over MAX_MIB=$MAX_MIB"
say "done. Copy .gpu/ with the repository; there: bash tools/gpu/offline_run.sh <command>"
