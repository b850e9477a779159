"""RMSNorm module (weight only, as in mamba-ssm) over :func:`espnet_mamba.ops.rms_norm.rms_norm`."""

from __future__ import annotations

import torch
from torch import nn

from espnet_mamba.ops.rms_norm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5, backend: str | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps, self.backend = eps, backend

    def forward(self, x):
        """norm(x) * weight (a residual add fused into it: modules/block.py, Stream)."""
        return rms_norm(x, self.weight, self.eps, backend=self.backend)
