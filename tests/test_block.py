"""The fused residual stream (modules/block.py: Stream) against the plain pre-norm unit."""

import pytest
import torch

from espnet_mamba.modules.block import Residual, Stream
from helpers import rel_err


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
