#!/usr/bin/env bash
# Bundle the speech synthesis tools of the synthetic-speech recipes for a machine that has none
# and no network (the GPU machine), on a Debian/Ubuntu x86-64 machine with apt and PyPI where
# they are installed (bash tools/install_recipe_deps.sh).  Makes one file:
#   .gpu/tts/tts_prefix.tar.xz    a folder `prefix/` of
#     usr/...        espeak-ng, flite, sox and every library they load (apt-get download of
#                    their Debian packages and of the packages of the shared libraries they need,
#                    unpacked with dpkg-deb -x), less the C library, the docs, and the espeak-ng
#                    dictionaries of languages other than English
#     bin/           wrappers espeak-ng, flite, sox that run those with LD_LIBRARY_PATH and
#                    ESPEAK_DATA_PATH set for themselves only (nothing else sees the libraries)
#     python/        py_nanotts (Pico, from its PyPI wheel; English voices only)
#     text/          the WordNet sentence lists of egs2/synth_speech (local/wordnet_text.py)
#     BUNDLE.txt     what is in it: packages and versions, wheel, sizes
# Use it there: egs2/synth_speech/asr1/run.sh finds .gpu/tts/tts_prefix.tar.xz by itself when
# espeak-ng is not on PATH (or --tts_prefix FILE); by hand:
#   eval "$(python3 tools/tts_corpus.py --prefix_env .gpu/tts/tts_prefix.tar.xz)"
# which unpacks it once under /tmp and prints the PATH, PYTHONPATH and SYNTH_SPEECH_TEXT_DIR.
# Usage: bash tools/gpu/fetch_tts.sh
# Env:   PYTHON (default .venv/bin/python: with pip, soundfile, numpy), MAX_MIB (fail if larger)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT_DIR=$ROOT/.gpu/tts
MAX_MIB=${MAX_MIB:-}
PY=${PYTHON:-$ROOT/.venv/bin/python}  # with soundfile and numpy (tools/setup_env.sh)
LDCONFIG=$(command -v ldconfig || echo /sbin/ldconfig)
# the engines (their binaries and data); the libraries they load are added below
ROOT_PKGS=(espeak-ng libespeak-ng1 espeak-ng-data flite libflite1 sox libsox3)
NANOTTS=py-nanotts==0.1.1
# on every Linux the GPU machine could be: the C library (its loader and parts)
SYSTEM_LIBS=" libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 ld-linux-x86-64.so.2 \
libresolv.so.2 libutil.so.1 "

say() { echo "[fetch_tts] $*"; }
die() { echo "[fetch_tts] ERROR: $*" >&2; exit 1; }
for t in apt-get dpkg dpkg-deb readelf tar xz; do
    command -v $t >/dev/null || die "needs $t (a Debian/Ubuntu machine with apt)"
done
[[ $(dpkg --print-architecture) == amd64 ]] || die "builds x86-64 binaries: run it on amd64"
[[ -e /usr/share/wordnet/data.noun ]] || die "no WordNet (/usr/share/wordnet): bash tools/install_recipe_deps.sh"
"$PY" -c 'import soundfile, numpy' 2>/dev/null \
    || die "PYTHON=$PY lacks soundfile or numpy (needed to make the sentence lists): bash tools/setup_env.sh"

WORK=$(mktemp -d /tmp/fetch_tts.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
P=$WORK/prefix
mkdir -p "$WORK/debs" "$P"

fetch() {  # fetch PKG...: apt-get download (this machine's versions) and unpack into the prefix
    local pkg ver specs=() deb
    for pkg in "$@"; do
        [[ -e $WORK/debs/$pkg.done ]] && continue
        # the installed version, so that the libraries are the ones the binaries were checked with
        ver=$(dpkg-query -W -f '${Version}' "$pkg" 2>/dev/null || true)
        specs+=("$pkg${ver:+=$ver}")
    done
    ((${#specs[@]})) || return 0
    # as root, apt warns that its sandbox user cannot write here: harmless
    if ! (cd "$WORK/debs" && apt-get download -q "${specs[@]}" >/dev/null 2>"$WORK/apt.err"); then
        # one by one; the mirror's version where it no longer has the installed one
        for pkg in "${specs[@]}"; do
            (cd "$WORK/debs" && { apt-get download -q "$pkg" || apt-get download -q "${pkg%%=*}"; } \
                >/dev/null 2>>"$WORK/apt.err") \
                || { cat "$WORK/apt.err" >&2; die "apt-get download ${pkg%%=*} failed (apt-get update?)"; }
        done
    fi
    grep -v "unsandboxed\|Can't find a source" "$WORK/apt.err" >&2 || true
    for pkg in "${specs[@]}"; do
        deb=$(ls -t "$WORK"/debs/"${pkg%%=*}"_*.deb | head -1)
        dpkg-deb -x "$deb" "$P"
        echo "${pkg%%=*} $(dpkg-deb -f "$deb" Version)" >> "$WORK/packages.txt"
        touch "$WORK/debs/${pkg%%=*}.done"
    done
}

package_of() {  # the installed package that holds a library (merged /usr: /lib is /usr/lib)
    local f real pkg
    real=$(readlink -f "$1")
    for f in "$real" "$1" "${real/#\/usr\/lib\//\/lib\/}" "${1/#\/lib\//\/usr\/lib\/}"; do
        pkg=$(dpkg -S "$f" 2>/dev/null | head -1 | cut -d: -f1 || true)
        [[ -n $pkg ]] && { echo "$pkg"; return; }
    done
    die "no installed package holds $1"
}

say "engines: ${ROOT_PKGS[*]}"
fetch "${ROOT_PKGS[@]}"

# the shared libraries the binaries and libraries of the prefix need, closed under NEEDED: each
# one missing from the prefix comes from the package that holds it on this machine (dpkg -S)
for round in 1 2 3 4 5 6 7 8; do
    # readelf reads many files a call; it complains about (and skips) the ones that are not ELF
    needed=$({ find "$P" -type f \( -perm -u+x -o -name '*.so*' \) -exec readelf -d {} + \
        2>/dev/null || true; } | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u)
    new=()
    for so in $needed; do
        [[ $SYSTEM_LIBS == *" $so "* ]] && continue
        [[ -n $(find "$P" -name "$so" -print -quit) ]] && continue
        # awk reads to the end: an early exit would end ldconfig by SIGPIPE, a failure under pipefail
        path=$("$LDCONFIG" -p | awk -v s="$so" '$1 == s && /x86-64/ && !found {print $NF; found = 1}')
        [[ -n $path ]] || die "$so is needed but not installed here: install the engines first"
        pkg=$(package_of "$path") || exit 1
        new+=("$pkg")
    done
    ((${#new[@]})) || break
    mapfile -t new < <(printf '%s\n' "${new[@]}" | sort -u)
    say "libraries, round $round: ${new[*]}"
    fetch "${new[@]}"
done

# what the recipes do not use: docs, manuals, locales, other languages' espeak-ng dictionaries,
# sox's format plugins (wav is built in), headers and static libraries
rm -rf "$P"/usr/share/{doc,man,lintian,locale,bug,info,pkgconfig} "$P"/usr/include \
    "$P"/usr/lib/x86_64-linux-gnu/sox "$P"/etc "$P"/usr/lib/systemd "$P"/lib/systemd
find "$P" -name '*.a' -delete
find "$P" -type l -lname '/*' -delete  # absolute links point outside the prefix
ESPEAK_DATA=$(dirname "$(find "$P" -type d -name espeak-ng-data | head -1)")
[[ -d $ESPEAK_DATA/espeak-ng-data ]] || die "no espeak-ng-data in the packages"
find "$ESPEAK_DATA/espeak-ng-data" -maxdepth 1 -name '*_dict' ! -name en_dict -delete

# wrappers: each engine with the prefix's libraries and data, for itself only
mkdir -p "$P/bin"
libdirs=$(cd "$P" && find . -name '*.so*' -printf '%h\n' | sort -u | sed 's|^\./||' | tr '\n' ' ')
for b in espeak-ng flite sox; do
    [[ -x $P/usr/bin/$b ]] || die "no usr/bin/$b in the packages"
    {
        echo '#!/bin/sh'
        echo "# $b of the bundle (tools/gpu/fetch_tts.sh): its own libraries and data"
        echo 'P=$(cd "$(dirname "$0")/.." && pwd)'
        printf 'L='; for d in $libdirs; do printf '$P/%s:' "$d"; done; echo
        echo "LD_LIBRARY_PATH=\$L\${LD_LIBRARY_PATH:-} ESPEAK_DATA_PATH=\$P/${ESPEAK_DATA#"$P"/} \\"
        echo "    exec \"\$P/usr/bin/$b\" \"\$@\""
    } > "$P/bin/$b"
    chmod +x "$P/bin/$b"
done

say "Pico: $NANOTTS (PyPI wheel for CPython 3.12 x86-64)"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$WORK/wheel" "$NANOTTS" \
    || die "pip download $NANOTTS failed (no PyPI?)"
mkdir -p "$P/python"
"$PY" -m zipfile -e "$WORK"/wheel/*.whl "$P/python"
find "$P/python/py_nanotts/lang" -type f ! -name 'en-*' -delete
rm -f "$P"/python/py_nanotts/*.c

say "sentence lists from WordNet (egs2/synth_speech/asr1/local/wordnet_text.py)"
"$PY" "$ROOT/egs2/synth_speech/asr1/local/wordnet_text.py" --out_dir "$P/text" >/dev/null

# the engines run from the bundle with the system's own out of reach: a smoke test
for b in espeak-ng flite sox; do
    (cd / && env -i PATH="$P/bin" "$P/bin/$b" --version >/dev/null 2>&1 \
        || env -i PATH="$P/bin" "$P/bin/$b" -version >/dev/null 2>&1) \
        || die "$b of the bundle does not run: $(env -i "$P/bin/$b" --version 2>&1 | tail -2)"
done
n=$(env -i "$P/bin/espeak-ng" --stdout -v en-us "hello world" | wc -c)
((n > 10000)) || die "espeak-ng of the bundle made $n bytes of audio"

{
    echo "tts_prefix: made by tools/gpu/fetch_tts.sh on $(date -u '+%F %T') UTC, $(. /etc/os-release; echo "$PRETTY_NAME")"
    echo; echo "Debian packages (apt-get download, dpkg-deb -x):"; sort "$WORK/packages.txt" | sed 's/^/  /'
    echo; echo "PyPI: $(basename "$WORK"/wheel/*.whl) (English voices only)"
    echo; echo "sizes (unpacked):"; (cd "$P" && du -sh usr bin python text | sed 's/^/  /')
} > "$P/BUNDLE.txt"

mkdir -p "$OUT_DIR"
say "packing $(du -sh "$P" | cut -f1) into $OUT_DIR/tts_prefix.tar.xz"
tar -C "$WORK" -cf - prefix | xz -T0 -9 > "$OUT_DIR/tts_prefix.tar.xz.part"
mv "$OUT_DIR/tts_prefix.tar.xz.part" "$OUT_DIR/tts_prefix.tar.xz"
bytes=$(stat -c %s "$OUT_DIR/tts_prefix.tar.xz")
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
cat "$P/BUNDLE.txt"
say "bundle: $OUT_DIR/tts_prefix.tar.xz, $mib MiB ($bytes bytes)"
[[ -z $MAX_MIB ]] || ((bytes <= MAX_MIB * 1048576)) || die "$mib MiB is over MAX_MIB=$MAX_MIB"
