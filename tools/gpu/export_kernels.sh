#!/usr/bin/env bash
# Pack the kernels built on this GPU machine so that a later machine of the same GPU
# architecture, torch and CUDA skips their build (about 2.5 minutes on an H100):
#   bash tools/gpu/export_kernels.sh OUT_DIR
# Writes OUT_DIR/<package>.tar.xz for mamba_ssm and causal_conv1d: the unpacked wheel that
# tools/build_kernels.sh built (site-packages layout, its extension stripped of symbols) plus a
# KERNEL_WHEELS file naming the torch/CUDA/arch it was built for.  Put the archives into
# .gpu/kernels/ of the next machine's copy: tools/gpu/offline_run.sh installs those whose label
# fits and builds only what is missing.  PART_MIB=15 splits each archive into
# <package>.tar.xz.partNN of at most 15 MiB (for transfers with a file-size limit): join them
# with `cat <package>.tar.xz.part* > .gpu/kernels/<package>.tar.xz`.
set -euo pipefail
out=$1
mkdir -p "$out"
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
    # 16 MiB blocks: xz -T0 then compresses on every core (its default block, 3x the dictionary,
    # would hold a whole extension and leave one thread doing the work)
    tar -C "$tmp" -cf - site | xz -9 -T0 --block-size=16MiB > "$tmp/$name.tar.xz"
    if [[ -n ${PART_MIB:-} ]]; then
        split -b "${PART_MIB}M" -d "$tmp/$name.tar.xz" "$out/$name.tar.xz.part"
    else
        cp "$tmp/$name.tar.xz" "$out/"
    fi
    echo "$name: $(du -sh "$tmp/site" | cut -f1) unpacked -> $(du -h "$tmp/$name.tar.xz" | cut -f1) xz in $((SECONDS - t0)) s"
    rm -rf "$tmp"
done
((exported)) || { echo "no kernel wheels in $WHEEL_DIR: nothing exported"; exit 1; }
ls -l "$out"/*.tar.xz*
