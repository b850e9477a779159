"""The backend switch and the optional kernels."""

import os
import subprocess
import sys

import pytest
import torch

from espnet_mamba.modules.mamba import Mamba
from espnet_mamba.ops import KernelsUnavailableError, check_backend, kernels_available
from espnet_mamba.ops.backend import use_kernels
from espnet_mamba.ops.selective_scan import selective_scan


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown Mamba backend 'cudaa'.*auto, torch, cuda"):
        check_backend("cudaa")
    with pytest.raises(ValueError, match="unknown Mamba backend"):
        Mamba(16, backend="gpu")


def test_env_default(monkeypatch):
    monkeypatch.setenv("ESPNET_MAMBA_BACKEND", "torch")
    assert check_backend(None) == "torch"
    monkeypatch.setenv("ESPNET_MAMBA_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        check_backend(None)


@pytest.mark.skipif(kernels_available("selective_scan"), reason="kernels are installed here")
def test_cuda_without_kernels_is_a_clear_error():
    """CUDA inputs and no kernels: the error says how to install them."""
    class OnCuda:  # use_kernels reads only where an input is
        is_cuda, device = True, torch.device("cuda")

    with pytest.raises(KernelsUnavailableError, match="backend='cuda'.*mamba_ssm.*build_kernels"):
        use_kernels("cuda", "selective_scan", OnCuda())


def test_cuda_on_cpu_inputs_runs_the_pytorch_path():
    """A model of backend 'cuda' decoded on a CPU (its weights are the same on every backend):
    the PyTorch path, with one warning (ops/backend.py)."""
    x = torch.randn(1, 4, 8)
    args = (x, x, -torch.ones(4, 2), torch.randn(1, 2, 8), torch.randn(1, 2, 8))
    assert torch.equal(selective_scan(*args, backend="cuda"), selective_scan(*args,
                                                                             backend="torch"))
    m = Mamba(16, backend="cuda")
    assert m(torch.randn(1, 5, 16)).shape == (1, 5, 16)


def test_auto_on_cpu_uses_torch():
    m = Mamba(16, backend="auto")
    assert m(torch.randn(2, 7, 16)).shape == (2, 7, 16)


def test_import_without_kernels_or_torch():
    """`import espnet_mamba` loads neither torch, ESPnet nor mamba-ssm (start-up cost), and the
    models import with mamba-ssm / causal-conv1d / triton made unimportable."""
    code = (
        "import sys\n"
        "for name in ('mamba_ssm', 'causal_conv1d', 'triton', 'selective_scan_cuda'):\n"
        "    sys.modules[name] = None\n"
        "import espnet_mamba\n"
        "assert 'torch' not in sys.modules and 'espnet2' not in sys.modules\n"
        "from espnet_mamba.encoders.samba_asr import SambaASREncoder\n"
        "import torch\n"
        "e = SambaASREncoder(20, output_size=16, num_blocks=1, backend='auto')\n"
        "y, n, _ = e(torch.randn(1, 30, 20), torch.tensor([30]))\n"
        "assert y.shape == (1, 6, 16)\n"
        "print('ok')\n")
    env = dict(os.environ, ESPNET_MAMBA_DISABLE_HOOK="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
