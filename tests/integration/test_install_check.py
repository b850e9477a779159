"""A torch / torchaudio pair that cannot load together is refused in words that name both.

pip pairs the newest torchaudio with an installed torch (torchaudio 2.11.1 declares only
``torch>=2.11``), and torchaudio 2.11.1's library does not load against torch 2.11.0.  The check
reads package metadata only; the end-to-end case shadows torchaudio's metadata with a newer
version in a subprocess and imports ESPnet's ASR task through the plugin's hook.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from espnet_mamba.integration.install_check import release, torch_companion_problem

REPO = Path(__file__).resolve().parents[2]


def test_release_ignores_local_build_tags():
    assert release("2.11.0+cu130") == (2, 11, 0)
    assert release("2.11") == (2, 11, 0)
    assert release("2.12.0rc1") == (2, 12, 0)
    with pytest.raises(ValueError, match="not a version"):
        release("abc")


@pytest.mark.parametrize("torch, audio, bad", [
    ("2.11.0+cu130", "2.11.1", True),      # the pair a fresh resolve made
    ("2.11.0", "2.12.0", True),
    ("2.11.0+cu130", "2.11.0", False),     # constraints.txt
    ("2.11.1", "2.11.0", False),           # torchaudio promises to run on later torch
])
def test_newer_torchaudio_than_torch_is_a_problem(torch, audio, bad):
    problem = torch_companion_problem({"torch": torch, "torchaudio": audio})
    if bad:
        assert f"torchaudio {audio} is newer than torch {torch}" in problem
        assert "constraints.txt" in problem
    else:
        assert problem is None


def test_absent_packages_are_left_to_the_importer():
    assert torch_companion_problem({"torch": "2.11.0"}) is None
    assert torch_companion_problem({}) is None


def test_constraints_pin_the_pair_the_check_accepts():
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert {"torch", "torchaudio", "espnet"} <= set(pins), pins
    assert torch_companion_problem(pins) is None


def test_hook_refuses_a_mismatched_pair_before_espnet_runs(tmp_path):
    fake = tmp_path / "site"  # first on sys.path: importlib.metadata finds this torchaudio first
    info = fake / "torchaudio-2.99.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torchaudio\nVersion: 2.99.0\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    env.pop("ESPNET_MAMBA_DISABLE_HOOK", None)
    proc = subprocess.run([sys.executable, "-c", "import espnet2.tasks.asr"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "IncompatibleInstallError" in proc.stderr, proc.stderr[-3000:]
    assert "torchaudio 2.99.0 is newer than torch" in proc.stderr, proc.stderr[-3000:]
