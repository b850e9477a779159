#!/usr/bin/env bash
# Build mamba-ssm's and causal-conv1d's CUDA kernels on a machine WITHOUT a GPU (where PyPI is
# reachable), for a GPU machine that should not spend its own minutes on the build:
#   bash tools/gpu/prebuild_kernels.sh [--arch 90] [--jobs N]
# Writes .gpu/kernels/{mamba_ssm,causal_conv1d}.tar.xz (tools/gpu/export_kernels.sh's archives),
# which tools/gpu/offline_run.sh installs instead of building when torch, CUDA and the GPU's
# architecture match (sm_90: H100, H200).
#
# The CUDA compiler comes from NVIDIA's PyPI wheels (nvcc, cccl, crt, nvvm), at the versions of
# the `cuda-toolkit` release that torch itself depends on, so compiler and torch's CUDA libraries
# match; the headers of cuBLAS, cuSPARSE... that ATen includes come from torch's own wheels.
# Nothing is installed into the venv: the compiler goes to $WORK (default /tmp/prebuild_kernels).
# Time: 43 min on 2 cores (2,599 s for mamba-ssm and 2,340 s for causal-conv1d, built side by
# side); minutes on a machine with many cores.  Archives: mamba_ssm 36 MiB, causal_conv1d 21 MiB.
# Env: TORCH_PYTHON (default .venv/bin/python), the Python whose torch the kernels are built for.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${TORCH_PYTHON:-$ROOT/.venv/bin/python}
WORK=${WORK:-/tmp/prebuild_kernels}
ARCH=90 JOBS=$(nproc)
while (($#)); do
    case $1 in
        --arch) ARCH=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
say() { echo "[prebuild_kernels] $*"; }
die() { echo "[prebuild_kernels] ERROR: $*" >&2; exit 1; }

read -r CUDA_V TORCH_NVIDIA < <("$PY" -c '
import os, torch, nvidia
print(torch.version.cuda or "none", os.path.dirname(nvidia.__path__[0] + "/"))') \
    || die "$PY cannot import torch with its NVIDIA wheels: run tools/setup_env.sh first"
[[ $CUDA_V != none ]] || die "$PY's torch is not a CUDA build"
TOOLKIT_V=$("$PY" -m pip show cuda-toolkit 2>/dev/null | sed -n 's/^Version: //p')
[[ -n $TOOLKIT_V ]] || die "no cuda-toolkit package beside torch: cannot tell which compiler matches"
MAJOR=${CUDA_V%%.*}
say "torch's CUDA $CUDA_V (cuda-toolkit $TOOLKIT_V): compiler wheels into $WORK"

# The compiler wheels, pinned by cuda-toolkit's own extras.
"$PY" -m pip install -q --no-compile --upgrade --target "$WORK/site" \
    "cuda-toolkit[nvcc,cccl,crt,nvvm,cudart]==$TOOLKIT_V"
CUDA_HOME=$WORK/site/nvidia/cu$MAJOR
[[ -x $CUDA_HOME/bin/nvcc ]] || die "no nvcc in $CUDA_HOME/bin after the install"
# torch's libraries' headers (cuBLAS, cuSPARSE, ...) beside the compiler's; theirs win
cp -rn "$TORCH_NVIDIA/cu$MAJOR/include/." "$CUDA_HOME/include/"
# torch's extension builder links -lcudart from CUDA_HOME/lib64
ln -sfn lib "$CUDA_HOME/lib64"
cudart=$(cd "$CUDA_HOME/lib" && ls libcudart.so.* | head -1)
ln -sf "$cudart" "$CUDA_HOME/lib/libcudart.so"
"$CUDA_HOME/bin/nvcc" --version | tail -1

export CUDA_HOME PATH=$CUDA_HOME/bin:$PATH PYTHON=$PY
bash "$ROOT/tools/build_kernels.sh" --arch "$ARCH" --jobs "$JOBS" --no-install \
    --wheel-dir "$WORK/wheels"
mkdir -p "$ROOT/.gpu/kernels"
WHEEL_DIR=$WORK/wheels bash "$ROOT/tools/gpu/export_kernels.sh" "$ROOT/.gpu/kernels"
say "done: .gpu/kernels holds kernels for sm_$ARCH; tools/gpu/offline_run.sh installs them"
