"""Pre-norm residual cross-attention sub-layer: x + dropout(attention(RMSNorm(x), memory)).

Queries come from the token stream, keys and values from a memory (the encoder output), masked
by length.  For decoding, the memory is projected once per utterance (:meth:`project`) and each
token reads it with :meth:`attend_step`: O(T) work per token over the T memory frames, and no
cache that grows with the output.  The parameters are those of a
:class:`~espnet_mamba.modules.block.Residual` around a
:class:`~espnet_mamba.modules.attention.MultiHeadAttention` (``norm``, ``layer.linear_q`` ...).
"""

from __future__ import annotations

import torch

from espnet_mamba.modules.attention import MultiHeadAttention
from espnet_mamba.modules.block import Residual
from espnet_mamba.modules.execution import Execution


class CrossAttention(Residual):
    def __init__(self, d_model: int, heads: int, dropout_rate: float = 0.0,
                 attention_dropout_rate: float = 0.0, d_memory: int | None = None,
                 execution: Execution | None = None):
        super().__init__(d_model, MultiHeadAttention(d_model, heads, attention_dropout_rate,
                                                     d_memory=d_memory),
                         dropout_rate, execution=execution)

    def forward(self, x, memory, memory_mask=None):
        """x (b, t, d) queries; memory (b, T, d_memory); memory_mask (b, T) bool, True valid."""
        return super().forward(x, memory, key_mask=memory_mask)

    def project(self, memory: torch.Tensor):
        """(b, T, d_memory) -> keys and values for :meth:`attend_step`."""
        return self.layer.project_memory(memory)

    def attend_step(self, x, keys, values, key_mask=None):
        """One token per row: x (n, d); keys/values of batch n or 1 (shared by the rows)."""
        y = self.layer.attend(self.norm(x)[:, None], keys, values, key_mask)[:, 0]
        return x + self.dropout(y)
