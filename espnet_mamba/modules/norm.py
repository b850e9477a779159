"""RMSNorm module (weight only, as in mamba-ssm) over :func:`espnet_mamba.ops.rms_norm.rms_norm`."""

from __future__ import annotations

import torch
from torch import nn

from espnet_mamba.modules import execution as ex
from espnet_mamba.ops.rms_norm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5, backend: str | None = None,
                 execution: ex.Execution | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.execution = ex.resolve(backend, execution)

    def forward(self, x):
        """norm(x) * weight (a residual add fused into it: modules/block.py, Stream)."""
        return rms_norm(x, self.weight, self.eps, backend=self.execution.backend,
                        kernel_min_numel=self.execution.norm_kernel_min_numel)
