#!/usr/bin/env bash
# Bring ESPnet's recipe machinery (egs2/TEMPLATE/asr1/asr.sh, Kaldi's utils/ and steps/, every
# corpus recipe) from PyPI, for users without an ESPnet git checkout.  The wheel that pip
# installs has no egs2/; ESPnet's source distribution on PyPI has all of it.
#   bash tools/fetch_espnet_recipes.sh [DEST]    (default: .cache/espnet-<version> in this repository)
# Prints the directory to pass as --espnet_root.  <version> is the installed espnet's (the
# project's venv, else $PYTHON), 202611 if none.  Nothing is fetched when DEST already holds it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-}
[[ -n $py ]] || { [[ -x $repo/.venv/bin/python ]] && py=$repo/.venv/bin/python; } || true
[[ -n $py ]] || py=$(bash "$repo/tools/find_python.sh")
version=$("$py" -c 'import importlib.metadata as m; print(m.version("espnet"))' 2>/dev/null || echo 202611)
dest=${1:-$repo/.cache/espnet-$version}
if [[ -f $dest/egs2/TEMPLATE/asr1/asr.sh ]]; then echo "$dest"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching ESPnet $version's source distribution from PyPI (about 36 MB)" >&2
"$py" -m pip --disable-pip-version-check download -q --no-deps --no-binary :all: \
    "espnet==$version" -d "$tmp" >&2 \
    || { echo "error: pip download espnet==$version (source distribution) failed" >&2; exit 1; }
mkdir -p "$tmp/x"
tar -xzf "$tmp"/espnet-*.tar.gz -C "$tmp/x"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp"/x/espnet-* "$dest"
[[ -f $dest/egs2/TEMPLATE/asr1/asr.sh ]] || { echo "error: $dest has no egs2/TEMPLATE/asr1/asr.sh" >&2; exit 1; }
echo "$dest"
