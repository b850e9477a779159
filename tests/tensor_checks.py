"""Tensor comparisons and losses shared by the tests: relative error, gradient error and a
projection loss."""

import torch


def rel_err(a, b):
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def projection_loss(y):
    """A loss whose gradients mean something: the encoders end in an RMSNorm, and with its unit
    initial weights the sum of squares of its output is nearly a constant (the width times the
    frame count, up to the norm's eps), whose gradients below the norm are mostly rounding
    noise.  A fixed random projection
    (seeded, the same for every call with this shape) has real gradients."""
    gen = torch.Generator().manual_seed(1234)
    weights = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    return (y * weights.to(device=y.device, dtype=y.dtype)).sum()


def grad_error(test, ref, floor=1e-6):
    """Worst error among the gradients of two runs ({name: tensor} each), each relative to its
    own size but at least to ``floor`` times the largest one: some gradients are zero in exact
    arithmetic (an attention key's bias: softmax ignores a constant added to every key) and
    hold rounding noise only.  Returns (error, name)."""
    largest = max(g.abs().max() for g in ref.values())
    worst = (0.0, None)
    for name, g in ref.items():
        err = ((test[name] - g).abs().max() / g.abs().max().clamp(min=floor * largest)).item()
        worst = max(worst, (err, name), key=lambda w: w[0])
    return worst
