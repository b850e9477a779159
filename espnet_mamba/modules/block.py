"""Pre-norm residual unit: x + dropout(f(RMSNorm(x))), the building block of every stack here."""

from __future__ import annotations

from torch import nn

from espnet_mamba.modules.norm import RMSNorm


class Residual(nn.Module):
    """Wraps a sub-layer ``f(x, *args, **kwargs)`` with RMSNorm, dropout and the skip path."""

    def __init__(self, d_model: int, layer: nn.Module, dropout_rate: float = 0.0,
                 backend: str | None = None):
        super().__init__()
        self.norm = RMSNorm(d_model, backend=backend)
        self.layer = layer
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x, *args, **kwargs):
        return x + self.dropout(self.layer(self.norm(x), *args, **kwargs))

    def step(self, x, state):
        """One token through a recurrent sub-layer (``layer.step``)."""
        y, state = self.layer.step(self.norm(x), state)
        return x + self.dropout(y), state
