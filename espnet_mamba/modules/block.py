"""Pre-norm residual unit: x + dropout(f(RMSNorm(x))), the building block of every stack here.

A stack may pass a :class:`Stream` instead of a tensor: the residual sum so far plus the last
sub-layer's output not yet added.  The next unit then does dropout + add + RMSNorm in one step
(one triton kernel on CUDA, mamba-ssm's fused add-norm) instead of three kernels each way: at
short utterances the encoders are bound by kernel launches, not arithmetic.  Same result,
same parameters.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from espnet_mamba.modules.execution import Execution
from espnet_mamba.modules.norm import RMSNorm
from espnet_mamba.ops.rms_norm import add_rms_norm


class Stream(NamedTuple):
    """x = residual + dropout(pending, dropout_p); residual None means x = pending.

    ``out_dtype``: the dtype of ``normed``'s output when it is not ``pending``'s, e.g. a stream
    restarted from the fp32 residual (intermediate CTC) inside a bf16 model.
    """

    residual: Optional[torch.Tensor]
    pending: torch.Tensor
    dropout_p: float = 0.0
    out_dtype: Optional[torch.dtype] = None

    def normed(self, norm: RMSNorm):
        """(norm(x), x) with the add and the dropout fused into the norm."""
        h, x = add_rms_norm(self.pending, self.residual, norm.weight, norm.eps,
                            self.dropout_p, backend=norm.execution.backend,
                            kernel_min_numel=norm.execution.norm_kernel_min_numel)
        return (h if self.out_dtype is None else h.to(self.out_dtype)), x


class Residual(nn.Module):
    """Wraps a sub-layer ``f(x, *args, **kwargs)`` with RMSNorm, dropout and the skip path."""

    def __init__(self, d_model: int, layer: nn.Module, dropout_rate: float = 0.0,
                 backend: str | None = None, execution: Execution | None = None):
        super().__init__()
        self.norm = RMSNorm(d_model, backend=backend, execution=execution)
        self.layer = layer
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x, *args, **kwargs):
        """x: a tensor (returns a tensor) or a :class:`Stream` (returns a Stream)."""
        if isinstance(x, Stream):
            h, residual = x.normed(self.norm)
            p = self.dropout.p if self.training else 0.0
            return Stream(residual, self.layer(h, *args, **kwargs), p)
        return x + self.dropout(self.layer(self.norm(x), *args, **kwargs))

    def step(self, x, state):
        """One token through a recurrent sub-layer (``layer.step``)."""
        y, state = self.layer.step(self.norm(x), state)
        return x + self.dropout(y), state

    def step_chunk(self, x, state):
        """Several tokens (batch, length, d_model) through a recurrent sub-layer
        (``layer.step_chunk``): ``step`` token by token, in one pass."""
        y, state = self.layer.step_chunk(self.norm(x), state)
        return x + self.dropout(y), state
