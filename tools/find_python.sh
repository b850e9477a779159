#!/usr/bin/env bash
# Print the path of a Python >= 3.12 (ESPnet 202611 needs it), or fail with a clear message.
# Prefers 3.12 (the version ESPnet 202611 was verified with): $PYTHON, python3.12, pyenv's
# 3.12.x, then any newer one (python3.13, pyenv's others, python3).
set -uo pipefail
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
candidates=(${PYTHON:-} python3.12)
pyenv_versions=()
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for v in $(ls -1 "$root/versions" 2>/dev/null | sort -rV); do
        pyenv_versions+=("$root/versions/$v/bin/python")
    done
fi
for p in "${pyenv_versions[@]}"; do [[ $p == */3.12.* ]] && candidates+=("$p"); done
candidates+=(python3.13 "${pyenv_versions[@]}" python3)
for c in "${candidates[@]}"; do
    [[ -n $c ]] || continue
    p=$(command -v "$c" 2>/dev/null) || continue
    if ok "$p"; then echo "$p"; exit 0; fi
done
echo "error: no Python >= 3.12 found (tried: ${candidates[*]}). ESPnet 202611 needs 3.12+;" \
     "install one (e.g. 'pyenv install 3.12' or 'apt-get install python3.12') or set PYTHON=..." >&2
exit 1
