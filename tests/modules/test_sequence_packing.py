"""Packed variable-length batches in the modules (modules/packing.py; Mamba2's packed paths,
chosen by the execution option ``packed_mixer``): packing, unpacking and reversing rows, widths
the fused kernel cannot take packed."""

import torch

from espnet_mamba.modules.packing import Packing
from espnet_mamba.modules.padding import reverse_padded


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


def test_widths_the_kernels_cannot_take_packed_run_unfused(monkeypatch):
    """mamba-ssm's fused mixer takes seq_idx only when in_proj's width and the conv's channels
    are multiples of 8 (nheads 10 here makes the width odd-sized): such mixers run the unfused
    path instead of failing inside the kernel."""
    from espnet_mamba.modules import mamba2
    from espnet_mamba.modules.packing import Packing
    mixer = mamba2.Mamba2(320, d_state=16, headdim=64).double()
    assert mixer.in_proj.out_features % 8 != 0
    monkeypatch.setattr(mamba2, "fused_mamba2_available", lambda *a: True)

    def kernel(*args, **kwargs):
        raise AssertionError("the fused kernel was called with a width it refuses")
    monkeypatch.setattr(mamba2, "fused_mamba2_split_scan", kernel)
    lengths = torch.tensor([5, 3])
    packing = Packing(lengths, 5)
    x = torch.randn(2, 5, 320, dtype=torch.float64)
    packed = mixer(packing.pack(x), packing=packing)
    monkeypatch.setattr(mamba2, "fused_mamba2_available", lambda *a: False)
    assert torch.allclose(packing.unpack(packed), mixer(x, lengths), atol=1e-12)
