"""The smoke run of egs2/mini_synth/asr1 that recipe tests share (``smoke_run`` in conftest.py).

With MINI_SYNTH_SMOKE_RUN=<recipe dir> the tests check that directory's finished smoke run (CI
makes it with the README's main command, ``bash tools/run_main.sh --smoke true``) instead of
running the recipe again in a copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "egs2" / "mini_synth" / "asr1"
TIMEOUT = 900
INSTALL_HINT = "run 'bash tools/install_recipe_deps.sh' from the repository root"


def missing_tools():
    missing = [b for b in ("espeak-ng", "flite", "sox") if shutil.which(b) is None]
    try:
        import py_nanotts  # noqa: F401
    except ImportError:
        missing.append("py-nanotts (pip package)")
    return missing


def tail(path: Path, n: int = 60) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def copy_recipe(src: Path, root: Path, ignore: tuple[str, ...]) -> Path:
    """A copy of the recipe directory ``src`` at root/egs2/mini_synth/asr1, with root/tools the
    repository's: run.sh's defaults find ../../../tools (and the Python) at the same depth."""
    recipe = root / "egs2" / "mini_synth" / "asr1"
    shutil.copytree(src, recipe, symlinks=True, ignore=shutil.ignore_patterns(*ignore))
    (root / "tools").symlink_to(REPO / "tools")
    return recipe


def run_recipe(recipe: Path, args: list[str], log: Path) -> int:
    """``bash run.sh ARGS`` in ``recipe`` with this Python; its output into ``log``."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with log.open("w") as f:
        proc = subprocess.run(["bash", "run.sh", *args, "--python", sys.executable],
                              cwd=recipe, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT, check=False)
    return proc.returncode


def smoke_run(tmp_path_factory):
    """(return code, recipe directory, log) of a finished ``run.sh --smoke true``."""
    shared = os.environ.get("MINI_SYNTH_SMOKE_RUN")
    if shared:  # a finished `run.sh --smoke true` (CI runs the README's main command first)
        recipe = Path(shared).resolve()
        log = Path(os.environ.get("MINI_SYNTH_SMOKE_LOG", recipe / "exp_smoke" / "missing.log"))
        assert (recipe / "exp_smoke").is_dir(), f"MINI_SYNTH_SMOKE_RUN={shared}: no exp_smoke there"
        return 0, recipe, log
    missing = missing_tools()
    assert not missing, f"the mini_synth recipe needs {', '.join(missing)}: {INSTALL_HINT}"
    work = tmp_path_factory.mktemp("mini_synth")
    recipe = copy_recipe(RECIPE, work, ("exp*", "dump*", "data*", "corpus*"))
    log = work / "run.log"
    return run_recipe(recipe, ["--smoke", "true"], log), recipe, log
