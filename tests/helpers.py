"""Small helpers shared by the tests."""


def rel_err(a, b):
    """max |a - b| / max |b|."""
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()
