#!/usr/bin/env bash
# Pack the kernels built on this GPU machine so that a later machine of the same GPU
# architecture and image skips their build:  export_kernels.sh OUT_DIR
# Writes OUT_DIR/<package>.tar.xz.partNN (<= 15 MiB each: what a device call may return), one
# archive per package (mamba_ssm, causal_conv1d): the unpacked wheel of tools/build_kernels.sh
# (site-packages layout, its extension stripped of symbols) plus KERNEL_WHEELS naming the
# torch/CUDA/arch it was built for.  Back here: cat each package's parts into
# .gpu/kernels/<package>.tar.xz.  tools/gpu/session.sh unpacks what is there, checks the label,
# and builds only what is missing.  Why per package: a call carries at most 64 MiB; both
# archives (~57 MiB) plus the wheels do not fit, one of them does (mamba_ssm alone builds in
# ~3 min, causal_conv1d in ~7: carry causal_conv1d).
set -euo pipefail
out=$1
WHEEL_DIR=${WHEEL_DIR:-/tmp/espnet_mamba_kernels}
shopt -s nullglob
exported=0
for name in mamba_ssm causal_conv1d; do
    wheels=("$WHEEL_DIR/$name"-*.whl)
    ((${#wheels[@]} == 1)) || { echo "expected 1 $name wheel in $WHEEL_DIR, found ${#wheels[@]}"; continue; }
    exported=$((exported + 1))
    tmp=$(mktemp -d)
    python3 -m zipfile -e "${wheels[0]}" "$tmp/site"
    if command -v strip >/dev/null; then strip --strip-unneeded "$tmp"/site/*.so; fi
    basename "${wheels[0]}" > "$tmp/site/KERNEL_WHEELS.$name"
    t0=$SECONDS
    tar -C "$tmp" -cf - site | xz -9e -T0 > "$tmp/$name.tar.xz"
    split -b 15M -d "$tmp/$name.tar.xz" "$out/$name.tar.xz.part"
    echo "$name: $(du -sh "$tmp/site" | cut -f1) unpacked -> $(du -h "$tmp/$name.tar.xz" | cut -f1) xz in $((SECONDS - t0)) s"
    rm -rf "$tmp"
done
((exported)) || { echo "no kernel wheels in $WHEEL_DIR: nothing exported"; exit 1; }
ls -l "$out"/*.tar.xz.part*
