"""Multi-head attention on torch's scaled_dot_product_attention (flash/efficient kernels on GPU).

Keys are masked by length, so padding never reaches a valid frame.  For decoding, the keys and
values of the speech are projected once per utterance (:meth:`project_memory`) and reused for
every token (:meth:`attend`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class MultiHeadAttention(nn.Module):
    # a packed row (modules/packing.py) is unpacked, run padded and packed again: attention
    # over a packed row would need a block-diagonal mask
    packs_by_padding = True

    def __init__(self, d_model: int, heads: int, dropout_rate: float = 0.0,
                 d_memory: int | None = None):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"attention: d_model={d_model} is not a multiple of heads={heads}")
        d_memory = d_memory or d_model
        self.heads, self.d_head = heads, d_model // heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_memory, d_model)
        self.linear_v = nn.Linear(d_memory, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.dropout_rate = dropout_rate

    def _heads(self, x):  # (b, t, d) -> (b, h, t, d_head)
        return x.unflatten(-1, (self.heads, self.d_head)).transpose(1, 2)

    def project_memory(self, memory):
        """(b, t, d_memory) -> keys and values (b, h, t, d_head)."""
        return self._heads(self.linear_k(memory)), self._heads(self.linear_v(memory))

    def attend(self, query, keys, values, key_mask=None):
        """query (b, t_q, d); keys/values from :meth:`project_memory`; key_mask (b, t_k) bool,
        True on valid keys.  Keys of batch m < b serve the queries in m equal consecutive runs
        (b / m rows each, e.g. the hypotheses of m utterances in a beam search): the runs'
        queries are attended together against their row, no keys copied."""
        q = self._heads(self.linear_q(query))  # (b, h, t_q, d_head)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        drop = self.dropout_rate if self.training else 0.0
        b, m = q.shape[0], keys.shape[0]
        if m == b:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=drop)
        else:
            if b % m:
                raise ValueError(f"attention: {b} queries cannot be split into runs over "
                                 f"{m} memory rows")
            run, (h, t_q, d) = b // m, q.shape[1:]
            # cross-attention has no mask between queries: a run's queries are one longer query
            q = q.view(m, run, h, t_q, d).transpose(1, 2).reshape(m, h, run * t_q, d)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=drop)
            y = y.view(m, h, run, t_q, d).transpose(1, 2).reshape(b, h, t_q, d)
        return self.linear_out(y.transpose(1, 2).flatten(2))

    def forward(self, query, memory=None, key_mask=None, packing=None):
        """Self-attention (memory None) or cross-attention over ``memory``.

        ``packing``: query is a packed (1, total, d) batch (modules/packing.py); attention then
        runs on the padded batch (packed, it would need a (total x total) block mask).
        """
        if packing is not None:
            return packing.padded(self.forward, query, memory, key_mask)
        keys, values = self.project_memory(query if memory is None else memory)
        return self.attend(query, keys, values, key_mask)
