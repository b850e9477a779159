"""Smoke run of the offline recipe egs2/mini_synth/asr1 (`run.sh --smoke true`).

Every stage runs (corpus synthesis, token lists, stats, one training epoch, decoding, scoring,
packing) on a tiny corpus in a copy of the recipe under pytest's tmp dir; about 3-4 minutes on
a 2-core CPU.  The TTS tools are required: when espeak-ng, flite, sox or py-nanotts are missing
the test fails (it does not skip) and says how to install them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
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


def test_recipe_tools_installed():
    missing = missing_tools()
    assert not missing, f"the mini_synth recipe needs {', '.join(missing)}: {INSTALL_HINT}"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    missing = missing_tools()
    assert not missing, f"the mini_synth recipe needs {', '.join(missing)}: {INSTALL_HINT}"
    # a private copy of the recipe (its outputs land next to run.sh); ../../.. must still be
    # the repository root for run.sh's defaults, so the copy gets the same depth
    work = tmp_path_factory.mktemp("mini_synth")
    recipe = work / "egs2" / "mini_synth" / "asr1"
    shutil.copytree(RECIPE, recipe, symlinks=True,
                    ignore=shutil.ignore_patterns("exp*", "dump*", "data*", "corpus*"))
    (work / "tools").symlink_to(REPO / "tools")
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = work / "run.log"
    with log.open("w") as f:
        proc = subprocess.run(["bash", "run.sh", "--smoke", "true", "--python", sys.executable],
                              cwd=recipe, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT)
    return proc.returncode, recipe, log


def tail(path: Path, n: int = 60) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def test_smoke_results_and_pack(smoke_run):
    rc, recipe, log = smoke_run
    assert rc == 0, f"run.sh --smoke true failed (rc={rc}):\n{tail(log)}"
    exps = [p for p in (recipe / "exp_smoke").glob("asr_*") if not p.name.startswith("asr_stats")]
    assert len(exps) == 1, f"expected one experiment dir, got {exps}"
    exp = exps[0]

    results = exp / "RESULTS.md"
    assert results.exists(), f"{results} missing\n{tail(log)}"
    text = results.read_text()
    test_sets = sorted(p.name for p in (recipe / "dump_smoke" / "raw").iterdir()
                       if p.name == "test" or p.name.startswith("test_"))
    assert "test" in test_sets and len(test_sets) == 4, test_sets  # test + 3 long-context sets
    for metric in ("WER", "CER"):
        section = text.split(f"### {metric}", 1)
        assert len(section) == 2, f"no {metric} table in {results}:\n{text}"
        body = section[1].split("###", 1)[0]
        for dset in test_sets:
            row = re.search(rf"^\|[^|]*/{re.escape(dset)}\|(\d+)\|(\d+)\|([\d.]+)\|([\d.]+)\|"
                            rf"([\d.]+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|$", body, re.M)
            assert row, f"no {metric} row for {dset} in {results}:\n{text}"
            assert int(row.group(1)) > 0 and int(row.group(2)) > 0

    zips = list(exp.glob("*.zip"))
    assert zips and zips[0].stat().st_size > 0, f"no packed model in {exp}\n{tail(log)}"
    import zipfile

    with zipfile.ZipFile(zips[0]) as z:
        names = z.namelist()
    assert any(n.endswith("config.yaml") for n in names), names
    assert any(n.endswith(".pth") for n in names), names
