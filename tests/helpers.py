"""Small helpers shared by the tests."""

import torch


def rel_err(a, b):
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def projection_loss(y):
    """A loss whose gradients mean something: the encoders end in an RMSNorm, and with its unit
    initial weights the sum of squares of its output is a constant (the width times the frame
    count), whose every gradient below the norm is rounding noise.  A fixed random projection
    (seeded, the same for every call with this shape) has real gradients."""
    gen = torch.Generator().manual_seed(1234)
    weights = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    return (y * weights.to(device=y.device, dtype=y.dtype)).sum()
