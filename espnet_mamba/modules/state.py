"""Per-hypothesis recurrent states for beam search: nested tuples of tensors, batch dim first.

A hypothesis owns rows of batch size 1; beam search stacks them into one batch for a step and
keeps the result as one batch (decoders/recurrent.py).  The size of a state never depends on how
many tokens it has read.
"""

from __future__ import annotations

import torch


def map_state(fn, state):
    if isinstance(state, torch.Tensor):
        return fn(state)
    return type(state)(map_state(fn, s) for s in state)


def stack_rows(states: list):
    """[state of batch 1, ...] -> one state of batch len(states).

    A leaf that is the same object for every row (a start state that ESPnet replicates over
    the beam) is expanded as a view instead of copied."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        if all(s is first for s in states):
            return first.expand(len(states), *first.shape[1:])
        return torch.cat(states, dim=0)
    return type(first)(stack_rows([s[i] for s in states]) for i in range(len(first)))


def select_row(state, i: int):
    """Row i of a batched state, as a state of batch 1."""
    return map_state(lambda t: t[i:i + 1], state)
