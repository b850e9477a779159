"""The fused residual stream (modules/block.py: Stream) against the plain pre-norm unit."""

import pytest
import torch

from espnet_mamba.modules.block import Residual, Stream
from tensor_checks import rel_err


def units(dropout=0.0):
    torch.manual_seed(0)
    return [Residual(16, torch.nn.Linear(16, 16), dropout).double() for _ in range(3)]


def test_stream_equals_plain_residual():
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    plain = x
    stream = Stream(None, x)
    for unit in units():
        plain = unit(plain)
        stream = unit(stream)
    norm = units()[0].norm.double()
    out_plain = norm(plain)
    out_stream, value = stream.normed(norm)
    assert rel_err(value, plain) < 1e-14 and rel_err(out_stream, out_plain) < 1e-14


@pytest.mark.parametrize("training", [True, False])
def test_stream_dropout(training):
    """Dropout of a unit's output is applied when the next norm adds it, only in training."""
    unit = units(dropout=0.5)[0].train(training)
    out = unit(Stream(None, torch.ones(64, 64, 16, dtype=torch.float64)))
    assert out.dropout_p == (0.5 if training else 0.0)
    _, value = out.normed(unit.norm)
    dropped = (value == 1.0).float().mean().item()  # residual 1 + 0 where the output dropped
    assert (abs(dropped - 0.5) < 0.05) if training else dropped < 0.01


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_stream_keeps_the_residual_in_fp32(dtype):
    """Half-precision sub-layer outputs: the residual sum is fp32 (it would overflow fp16 first:
    20 layers of outputs near 4e3 already exceed 65504), the normalised output is the layer's
    dtype, as with mamba-ssm's residual_in_fp32."""
    torch.manual_seed(0)
    norm = units()[0].norm.float()
    stream = Stream(None, torch.full((2, 3, 16), 4000.0, dtype=dtype))
    for _ in range(20):
        h, residual = stream.normed(norm)
        assert residual.dtype == torch.float32 and h.dtype == dtype
        stream = Stream(residual, torch.full((2, 3, 16), 4000.0, dtype=dtype))
    h, residual = stream.normed(norm)
    assert torch.isfinite(residual).all() and residual.max().item() == 21 * 4000.0
    assert torch.isfinite(h).all()
