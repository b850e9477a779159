"""Packed variable-length batches (modules/packing.py, encoder option ``pack_sequences``)."""

import pytest
import torch

from espnet_mamba.modules.packing import Packing
from espnet_mamba.modules.padding import reverse_padded
from model_checks import MIXER_CONF, packed_vs_padded_error


def test_pack_unpack_reverse():
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(4, 7, 2)
    p = Packing(lengths, 7)
    packed = p.pack(x)
    assert packed.shape == (1, 16, 2)
    assert p.seq_idx.tolist() == [[0] * 3 + [1] * 7 + [2] + [3] * 5]
    assert torch.equal(packed[0, 3:10], x[1])
    mask = (torch.arange(7)[None] < lengths[:, None])[..., None]
    assert torch.equal(p.unpack(packed), x * mask)
    assert torch.equal(p.unpack(p.reverse(packed)), reverse_padded(x, lengths) * mask)
    assert torch.equal(p.reverse(p.reverse(packed)), packed)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("mixer", list(MIXER_CONF))
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_packed_encoder_equals_padded(name, mixer, bidirectional):
    """Outputs and gradients are the same with and without packing (PyTorch path, fp64)."""
    assert packed_vs_padded_error(name, mixer, bidirectional=bidirectional) < 1e-10


def test_seq_idx_on_the_cpu_is_refused_by_name():
    """The seq_idx pieces exist only as CUDA kernels: the PyTorch path says so, rather than
    mixing utterances silently."""
    from espnet_mamba.ops.causal_conv1d import causal_conv1d
    from espnet_mamba.ops.ssd import ssd_scan
    seq_idx = torch.zeros(1, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="seq_idx .*CUDA"):
        causal_conv1d(torch.randn(1, 4, 8), torch.randn(4, 4), seq_idx=seq_idx)
    with pytest.raises(ValueError, match="seq_idx .*CUDA"):
        ssd_scan(torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2), -torch.ones(2),
                 torch.randn(1, 8, 1, 3), torch.randn(1, 8, 1, 3), seq_idx=seq_idx)


@pytest.mark.parametrize("path", ["fused", "unfused"])
def test_packed_path_falls_back_to_padded_without_kernels(path, monkeypatch):
    """Off CUDA every packed path runs the padded batch (exact), whatever PACKED_PATH says."""
    from espnet_mamba.modules import mamba2
    monkeypatch.setattr(mamba2, "PACKED_PATH", path)
    assert packed_vs_padded_error("samba_asr", "mamba2", bidirectional=False) < 1e-10


def test_unknown_packed_path_in_the_environment_is_named():
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-c", "import espnet_mamba.modules.mamba2"], capture_output=True,
        text=True, env={**__import__("os").environ, "ESPNET_MAMBA_PACKED_MIXER": "fast"})
    assert proc.returncode != 0
    assert "ESPNET_MAMBA_PACKED_MIXER='fast'" in proc.stderr and "unfused" in proc.stderr
