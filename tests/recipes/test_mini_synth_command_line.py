"""The mini_synth recipe's command line, started the ways the READMEs start it.

run.sh reads its own option block and usage text from its file: these check that it finds them
from any working directory (``bash egs2/mini_synth/asr1/run.sh``, ``./run.sh`` inside the recipe,
an absolute path from elsewhere, and the README's ``bash tools/run_main.sh``), without running a
stage.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "egs2" / "mini_synth" / "asr1"
RUN_SH = RECIPE / "run.sh"


def option_names() -> list[str]:
    """The options run.sh declares (its `# --- options` ... `# end of options` block)."""
    lines = RUN_SH.read_text().splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("# ---") and x.endswith(" options"))
    end = lines.index("# end of options")
    return [x.split("=", 1)[0] for x in lines[start + 1:end] if "=" in x and x[:1].isalpha()]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ))


STARTS = {
    "from the repository root": (["bash", "egs2/mini_synth/asr1/run.sh"], REPO),
    "inside the recipe": (["./run.sh"], RECIPE),
    "absolute path from elsewhere": (["bash", str(RUN_SH)], Path("/")),
    "the README's main command": (["bash", "tools/run_main.sh"], REPO),
}


@pytest.mark.parametrize("how", sorted(STARTS))
def test_help_lists_every_option(how):
    cmd, cwd = STARTS[how]
    proc = run(cmd + ["--help"], cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = option_names()
    assert {"stage", "smoke", "nthreads", "asr_config"} <= set(names), names
    for name in names:
        assert f"  --{name} " in proc.stdout, f"--{name} missing from --help ({how}):\n{proc.stdout}"
    assert "=== [run_main" not in proc.stdout, "--help must not set anything up"


@pytest.mark.parametrize("how", ["from the repository root", "absolute path from elsewhere"])
def test_unknown_option_is_refused_by_name(how):
    cmd, cwd = STARTS[how]
    proc = run(cmd + ["--n_trian", "5"], cwd)
    assert proc.returncode == 1
    assert "unknown option --n_trian" in proc.stderr, proc.stderr
