#!/usr/bin/env bash
# Install what the offline recipe egs2/mini_synth/asr1 needs besides the Python environment:
#   Debian packages: espeak-ng, flite, sox (+ libsox-fmt-all), wordnet-base (only for
#                    re-making the committed text lists with local/prepare_text.py)
#   PyPI:            py-nanotts (Pico TTS en-US / en-GB) into the project venv
#
#   bash tools/install_recipe_deps.sh [VENV_DIR]     (default: .venv of this repository)
#
# Needs root (or sudo) for apt-get.  Everything else the recipe uses (torch, espnet,
# sentencepiece, editdistance, matplotlib) comes with `bash tools/setup_env.sh`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${1:-.venv}
step() { echo "=== [install_recipe_deps $(date +%H:%M:%S)] $*"; }
die() { echo "error: $*" >&2; exit 1; }

APT_PKGS=(espeak-ng flite sox libsox-fmt-all wordnet-base)
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v flite >/dev/null 2>&1 || need+=(flite)
command -v sox >/dev/null 2>&1 || need+=(sox libsox-fmt-all)
[[ -e /usr/share/wordnet/data.verb || -e /usr/share/wordnet/data.noun ]] || need+=(wordnet-base)

if ((${#need[@]})); then
    step "apt-get install ${need[*]}"
    SUDO=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to apt-get install ${need[*]};" \
            "run as root: apt-get install -y ${APT_PKGS[*]}"
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get here (not Debian/Ubuntu). Install by" \
        "hand: ${need[*]} (espeak-ng, flite with voices kal/kal16, sox, WordNet 3.0 database)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq || die "apt-get update failed (no network or no Debian mirror?)"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed; try: apt-get install -y ${need[*]}"
else
    step "Debian packages already there (espeak-ng, flite, sox, wordnet-base)"
fi
for b in espeak-ng flite sox; do
    command -v $b >/dev/null 2>&1 || die "$b still missing after apt-get install"
done
flite -lv 2>/dev/null | grep -qw kal16 || die "flite has no kal16 voice (flite -lv)"

[[ -x $VENV/bin/python ]] || die "no Python venv at $VENV: run 'bash tools/setup_env.sh' first"
if "$VENV/bin/python" -c "import py_nanotts" 2>/dev/null; then
    step "py-nanotts already in $VENV"
else
    step "pip install py-nanotts into $VENV"
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install py-nanotts \
        || die "pip install py-nanotts failed (PyPI not reachable?)"
    "$VENV/bin/python" -c "import py_nanotts" || die "py-nanotts installed but 'import py_nanotts' fails"
fi
step "done"
