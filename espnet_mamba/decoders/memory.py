"""The speech memory of a cross-attention decoder during beam search: each layer's keys and
values of one or more utterances, projected once per utterance and shared by its hypotheses."""

from __future__ import annotations

import weakref

import torch


class SpeechMemory:
    def __init__(self, keys_values, key_mask):
        self.keys_values = keys_values  # per layer: (keys, values), each (b, heads, T, d_head)
        self.key_mask = key_mask  # (b, T) bool
        # (weak references to the memories stacked, their stack): see stack()
        self._stacked = None

    def select(self, i: int) -> "SpeechMemory":
        return SpeechMemory([(k[i:i + 1], v[i:i + 1]) for k, v in self.keys_values],
                            self.key_mask[i:i + 1])

    @classmethod
    def stack(cls, memories: list) -> "SpeechMemory":
        """One memory per hypothesis -> one batch.  Hypotheses of a single utterance share one
        object: it is returned as is (attention broadcasts it), nothing is copied.

        Hypotheses of several utterances in equal consecutive runs (ESPnet's BatchBeamSearch
        keeps its (utterance, beam) grid utterance by utterance) get one row per utterance,
        each serving its run of hypotheses (``MultiHeadAttention.attend`` groups the queries),
        and that stack is kept on the first utterance's memory: the next steps of the same
        utterances reuse it, so a step copies no keys or values.  Anything else is stacked
        row by row."""
        first = memories[0]
        if all(m is first for m in memories):
            return first
        distinct = _equal_runs(memories)
        if distinct is None:
            return cls._concat(memories)
        cached = distinct[0]._stacked
        if cached is not None and len(cached[0]) == len(distinct) and all(
                ref() is m for ref, m in zip(cached[0], distinct)):
            return cached[1]
        stacked = cls._concat(distinct)
        distinct[0]._stacked = (tuple(weakref.ref(m) for m in distinct), stacked)
        return stacked

    @staticmethod
    def kept(memories: list, memory: "SpeechMemory") -> bool:
        """Whether ``memory`` (what ``stack(memories)`` returned) is an object the next steps of
        the same utterances get again: one utterance's own memory, or the runs' stack kept on
        the first utterance's memory; not a row-by-row copy made for this step alone.  A
        decoder's CUDA-graph step may read only a kept memory (graphs/decoding.py)."""
        first = memories[0]
        if memory is first:
            return True
        cached = first._stacked
        return cached is not None and cached[1] is memory

    @classmethod
    def _concat(cls, memories: list) -> "SpeechMemory":
        first = memories[0]
        keys_values = [(torch.cat([m.keys_values[i][0] for m in memories]),
                        torch.cat([m.keys_values[i][1] for m in memories]))
                       for i in range(len(first.keys_values))]
        return cls(keys_values, torch.cat([m.key_mask for m in memories]))


def _equal_runs(memories: list):
    """The distinct memories if ``memories`` is runs of equal length of one object each (every
    object in one run only), else None."""
    distinct = [memories[0]]
    for m in memories:
        if m is distinct[-1]:
            continue
        if any(m is d for d in distinct):
            return None
        distinct.append(m)
    run = len(memories) // len(distinct)
    if run * len(distinct) != len(memories):
        return None
    for i, d in enumerate(distinct):
        if any(m is not d for m in memories[i * run:(i + 1) * run]):
            return None
    return distinct
