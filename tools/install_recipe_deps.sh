#!/usr/bin/env bash
# Install what the recipes (egs2/*/asr1) and their tests need besides the Python environment:
#   Debian packages: espeak-ng, flite, sox (+ libsox-fmt-all): speech synthesis (mini_synth, the
#                    LibriSpeech tiny corpus) and ESPnet's speed perturbation;
#                    sctk: sclite, which ESPnet's asr.sh scores with (Debian puts it in
#                    /usr/lib/sctk/bin, off PATH: egs2/espnet_path.sh adds that directory);
#                    flac: ESPnet's own LibriSpeech data_prep.sh refuses to run without it
#                    (this repository's LibriSpeech recipes read FLAC with soundfile);
#                    wordnet-base (only for re-making mini_synth's text lists, local/prepare_text.py)
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

APT_PKGS=(espeak-ng flite sox libsox-fmt-all wordnet-base flac sctk)
SCLITE_DIR=/usr/lib/sctk/bin  # where Debian's sctk keeps sclite (dpkg -L sctk)
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v flite >/dev/null 2>&1 || need+=(flite)
command -v sox >/dev/null 2>&1 || need+=(sox libsox-fmt-all)
[[ -e /usr/share/wordnet/data.verb || -e /usr/share/wordnet/data.noun ]] || need+=(wordnet-base)
command -v flac >/dev/null 2>&1 || need+=(flac)
command -v sclite >/dev/null 2>&1 || [[ -x $SCLITE_DIR/sclite ]] || need+=(sctk)

if ((${#need[@]})); then
    step "apt-get install ${need[*]}"
    SUDO=()
    if [[ $(id -u) != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "need root or sudo to apt-get install ${need[*]};" \
            "run as root: apt-get install -y ${APT_PKGS[*]}"
        SUDO=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "no apt-get here (not Debian/Ubuntu). Install by" \
        "hand: ${need[*]} (espeak-ng, flite with voices kal/kal16, sox, WordNet 3.0 database," \
        "flac, sclite of NIST's SCTK on PATH)"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq || die "apt-get update failed (no network or no Debian mirror?)"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
        || die "apt-get install ${need[*]} failed; try: apt-get install -y ${need[*]}"
else
    step "Debian packages already there (espeak-ng, flite, sox, wordnet-base, flac, sctk)"
fi
for b in espeak-ng flite sox flac; do
    command -v $b >/dev/null 2>&1 || die "$b still missing after apt-get install"
done
command -v sclite >/dev/null 2>&1 || [[ -x $SCLITE_DIR/sclite ]] \
    || die "sclite still missing after apt-get install sctk (looked on PATH and in $SCLITE_DIR)"
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
