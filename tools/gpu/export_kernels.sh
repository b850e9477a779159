#!/usr/bin/env bash
# Pack the kernels built on this GPU machine so that a later machine of the same GPU
# architecture and image skips the ~7-minute build:  export_kernels.sh OUT_DIR
# Writes OUT_DIR/kernels.tar.xz.partNN (<= 15 MiB each: what a device call may return) with the
# unpacked wheels of tools/build_kernels.sh (site-packages layout, named for torch/CUDA/arch).
# Back here: cat the parts into .gpu/kernels.tar.xz; tools/gpu/session.sh unpacks it into its
# site folder and checks the label before it skips the build.
set -euo pipefail
out=$1
WHEEL_DIR=${WHEEL_DIR:-/tmp/espnet_mamba_kernels}
shopt -s nullglob
wheels=("$WHEEL_DIR"/*.whl)
((${#wheels[@]} == 2)) || { echo "expected 2 kernel wheels in $WHEEL_DIR, found ${#wheels[@]}"; exit 1; }
tmp=$(mktemp -d)
for w in "${wheels[@]}"; do python3 -m zipfile -e "$w" "$tmp/site"; done
basename -a "${wheels[@]}" > "$tmp/site/KERNEL_WHEELS"
t0=$SECONDS
tar -C "$tmp" -cf - site | xz -6 -T0 > "$tmp/kernels.tar.xz"
size=$(stat -c %s "$tmp/kernels.tar.xz")
# a device call returns 8 files at most, one of them the job's logs (tools/gpu/detached.sh)
((size <= 6 * 15 * 1024 * 1024)) || { echo "kernels.tar.xz is $size bytes: too big to return"; exit 1; }
split -b 15M -d "$tmp/kernels.tar.xz" "$out/kernels.tar.xz.part"
echo "kernels: $(du -sh "$tmp/site" | cut -f1) unpacked -> $(du -h "$tmp/kernels.tar.xz" | cut -f1) xz in $((SECONDS - t0)) s:"
ls -l "$out"/kernels.tar.xz.part*
rm -rf "$tmp"
