"""tools/gpu/wait_kernels.sh, the gate of the Mamba trainings while offline_run.sh builds the
kernels in the background: which configs wait, and what a finished, failed or endless build gives."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu" / "wait_kernels.sh"
CONF = REPO / "egs2" / "synth_speech" / "asr1" / "conf" / "tuning"


def wait(config, status=None, **env):
    # python3 must see this package and PyYAML, as on the GPU machine after offline_run.sh
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    full = dict(os.environ, PATH=path, PYTHONPATH=str(REPO), **env)
    full.pop("ESPNET_MAMBA_KERNELS_STATUS", None)
    if status is not None:
        full["ESPNET_MAMBA_KERNELS_STATUS"] = str(status)
    args = ["bash", str(SCRIPT)] + ([str(config)] if config else [])
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60, env=full)


def test_no_background_build_means_no_wait(tmp_path):
    assert wait(CONF / "train_asr_samba_asr.yaml").returncode == 0


def test_espnet_models_do_not_wait(tmp_path):
    # the status file never appears: a wait would time out (limit 1 s) and fail
    proc = wait(CONF / "train_asr_conformer.yaml", tmp_path / "status", ESPNET_MAMBA_KERNELS_WAIT_S="1")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba", "samba_asr_prefix"])
def test_mamba_models_wait_for_the_build(tmp_path, name):
    status = tmp_path / "status"
    proc = wait(CONF / f"train_asr_{name}.yaml", status, ESPNET_MAMBA_KERNELS_WAIT_S="1")
    assert proc.returncode == 1 and "has not ended after 1 s" in proc.stderr, proc.stderr
    status.write_text("ok\n")
    proc = wait(CONF / f"train_asr_{name}.yaml", status)
    assert proc.returncode == 0 and "kernels ready" in proc.stderr, proc.stderr


def test_failed_build_stops_the_wait_with_its_log(tmp_path):
    (tmp_path / "install.log").write_text("nvcc fatal: something broke\n")
    (tmp_path / "status").write_text("failed\n")
    proc = wait(CONF / "train_asr_samba_asr.yaml", tmp_path / "status")
    assert proc.returncode == 1 and "nvcc fatal: something broke" in proc.stderr, proc.stderr


def test_unreadable_or_missing_config_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoder: [unclosed\n")
    proc = wait(bad, tmp_path / "status")
    assert proc.returncode == 2 and "cannot read the model names" in proc.stderr, proc.stderr
    proc = wait(tmp_path / "none.yaml", tmp_path / "status")
    assert proc.returncode == 2 and "no config" in proc.stderr, proc.stderr
