#!/usr/bin/env python3
"""Name the right software in the RESULTS.md files that ESPnet's asr.sh (stage 13) writes.

    python results_versions.py exp/asr_xxx/RESULTS.md [...]     (espnet_root.sh runs it)

ESPnet's scripts/utils/show_asr_result.sh reports `git rev-parse HEAD` of the recipe directory
as "Git hash".  For a recipe of this repository that is espnet-mamba's commit, labelled as if it
were ESPnet's.  This replaces those two lines (and the lines of an earlier run of this script)
by: the ESPnet recipe scripts used (ESPNET_ROOT, its version.txt, its git commit if it is a git
checkout) and espnet-mamba (the installed version, the git commit of the recipe directory).
The python, espnet2 and pytorch lines of show_asr_result.sh stay as they are.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

OURS = "- espnet-mamba"  # first words of the lines this script writes
ESPNET_LINE = "- ESPnet recipe scripts"


def git(directory: Path, *args: str) -> str | None:
    try:
        p = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_commit(directory: Path, is_its_tree) -> str | None:
    """`<hash>` (`<date>`) of the git tree that holds `directory`, only if `is_its_tree(top)`
    for that tree's top directory (else git would report an unrelated repository above it)."""
    top = git(directory, "rev-parse", "--show-toplevel")
    if not top or not is_its_tree(Path(top)):
        return None
    commit = git(directory, "rev-parse", "HEAD")
    date = git(directory, "log", "-1", "--format=%cd")
    dirty = git(directory, "status", "--porcelain", "--untracked-files=no")
    text = f"git `{commit}` (`{date}`)"
    return text + (", with uncommitted changes" if dirty else "")


def espnet_line() -> str:
    root = os.environ.get("ESPNET_ROOT")
    if not root:
        return f"{ESPNET_LINE}: ESPNET_ROOT is not set"
    root_path = Path(root)
    version_file = root_path / "version.txt"
    version = version_file.read_text().strip() if version_file.is_file() else "unknown version"
    commit = git_commit(root_path, lambda top: top.resolve() == root_path.resolve())
    where = commit or "not a git checkout (e.g. ESPnet's source distribution)"
    return f"{ESPNET_LINE}: `{root}`, ESPnet {version}, {where}"


def plugin_lines(recipe_dir: Path) -> list[str]:
    try:
        version = f"`espnet-mamba {importlib.metadata.version('espnet-mamba')}`"
    except importlib.metadata.PackageNotFoundError:
        version = f"not installed in {sys.executable}"
    commit = (git_commit(recipe_dir, lambda top: (top / "egs2" / "espnet_root.sh").is_file())
              or "not in a git checkout")
    return [f"{OURS} version: {version}",
            f"{OURS} recipe: `{recipe_dir}`, {commit}"]


def rewrite(text: str, new_lines: list[str]) -> str:
    lines = text.split("\n")
    out, done = [], False
    for line in lines:
        replaced = (line.startswith("- Git hash:") or line.startswith("  - Commit date:")
                    or line.startswith(OURS) or line.startswith(ESPNET_LINE))
        if not replaced:
            out.append(line)
        elif not done:
            out.extend(new_lines)
            done = True
    if not done:
        raise ValueError("no '- Git hash:' line (is this a RESULTS.md of asr.sh's stage 13?)")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    recipe_dir = Path.cwd()
    new_lines = [espnet_line(), *plugin_lines(recipe_dir)]
    for name in argv:
        path = Path(name)
        try:
            path.write_text(rewrite(path.read_text(), new_lines))
        except (OSError, ValueError) as e:
            print(f"results_versions.py: error: {path}: {e}", file=sys.stderr)
            return 1
        print(f"results_versions.py: {path}: " + "; ".join(new_lines), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
