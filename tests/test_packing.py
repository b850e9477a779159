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
