"""Helpers that keep right-padded (and left-padded) batches exact."""

from __future__ import annotations

import torch

# dt before softplus on masked frames: softplus(-1e4 + bias) is exactly 0 in fp16/fp32/fp64, so a
# masked frame is an identity step of the scan (decay 1, input 0) and gets no gradient.
MASKED_DT = -1.0e4


def lengths_to_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(batch,) lengths -> (batch, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def mask_end(mask: torch.Tensor) -> torch.Tensor:
    """Index one past the last valid frame of each row of a (batch, length) mask."""
    pos = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * pos).amax(dim=1)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence of x (batch, length, ...) within its own length.

    Padded frames stay where they are, so the reversed batch is again right-padded and the
    backward direction of a bidirectional layer sees exactly the frames the utterance has.
    """
    if lengths is None:
        return x.flip(1)
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    idx = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return torch.gather(x, 1, idx)
