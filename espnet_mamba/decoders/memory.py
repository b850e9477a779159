"""The speech memory of a cross-attention decoder during beam search: each layer's keys and
values of one or more utterances, projected once per utterance and shared by its hypotheses."""

from __future__ import annotations

import torch


class SpeechMemory:
    def __init__(self, keys_values, key_mask):
        self.keys_values = keys_values  # per layer: (keys, values), each (b, heads, T, d_head)
        self.key_mask = key_mask  # (b, T) bool

    def select(self, i: int) -> "SpeechMemory":
        return SpeechMemory([(k[i:i + 1], v[i:i + 1]) for k, v in self.keys_values],
                            self.key_mask[i:i + 1])

    @classmethod
    def stack(cls, memories: list) -> "SpeechMemory":
        """One memory per hypothesis -> one batch.  Hypotheses of a single utterance share one
        object: it is returned as is (attention broadcasts it), nothing is copied."""
        first = memories[0]
        if all(m is first for m in memories):
            return first
        keys_values = [(torch.cat([m.keys_values[i][0] for m in memories]),
                        torch.cat([m.keys_values[i][1] for m in memories]))
                       for i in range(len(first.keys_values))]
        return cls(keys_values, torch.cat([m.key_mask for m in memories]))
