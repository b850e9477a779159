"""Packed variable-length batches: the valid frames of a right-padded batch laid end to end.

A padded batch of lengths (2 s, 35 s, ...) spends most of its work on padding.  Packed, the
frames form one sequence (1, total, ...) and a ``seq_idx`` (1, total) tells mamba-ssm's Mamba2
kernels (causal conv1d and the SSD scan) where each utterance starts, so no state crosses an
utterance boundary.  Per-frame layers (norms, projections, residual adds) need nothing.
Mamba2 mixers run packed rows natively (the execution option ``packed_mixer``,
modules/mamba2.py): mamba-ssm's kernels on
CUDA, the same ``seq_idx`` logic in PyTorch elsewhere.

Layers that cannot run packed (Mamba v1: mamba-ssm's selective scan has no ``seq_idx``;
attention) call :meth:`Packing.unpack`, run padded with ``lengths`` and pack
again, which is exact because every layer here is exact under padding.
"""

from __future__ import annotations

import numpy as np
import torch


class Packing:
    """Index maps between a right-padded (batch, max_len, ...) tensor and (1, total, ...).

    Built on the host from the lengths as Python ints (a tensor of lengths is read once) and
    copied to ``device``, where building them on the GPU took two dozen small kernels and a
    wait (for ``nonzero``).  ``Packing.host`` + :func:`to_device` copy the maps of several
    packings in one transfer; before the step's first kernel, that copy waits for nothing."""

    def __init__(self, lengths, max_len: int, device=None):
        if isinstance(lengths, torch.Tensor):
            device = lengths.device if device is None else device
            lengths = lengths.tolist()
        self._build(lengths, max_len)
        self._place(_to_device(self._host, device))

    @classmethod
    def host(cls, lengths: list, max_len: int) -> "Packing":
        """The maps on the host only; :func:`to_device` places them."""
        packing = cls.__new__(cls)
        packing._build(lengths, max_len)
        return packing

    def _build(self, lengths, max_len):
        # numpy, not torch on the CPU: torch's CPU advanced indexing cost 9 ms per step on an
        # H100 machine's host (torch.profiler), more than the packed layers' forward
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        self.batch, self.max_len = lens.size, max_len
        self.total = int(lens.sum())
        starts = np.cumsum(lens) - lens
        # each packed frame's utterance and its position in it
        self.lens_host, self.seq_host = lens, np.repeat(np.arange(lens.size), lens)
        self.offset_host = np.arange(self.total) - np.repeat(starts, lens)
        index = self.seq_host * max_len + self.offset_host
        # the same frame counted from its utterance's end (an involution)
        reverse = np.repeat(starts + lens - 1, lens) - self.offset_host
        self._host = [index, self.seq_host, reverse, lens]

    def _place(self, tensors):
        self.index, seq, self.reverse_index, self.lengths = tensors
        self.seq_idx = seq.to(torch.int32)[None]  # (1, total): the utterance of each frame

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, max_len, ...) -> (1, total, ...): valid frames only."""
        return x.flatten(0, 1).index_select(0, self.index).unsqueeze(0)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(1, total, ...) -> (batch, max_len, ...), zeros on padded frames."""
        flat = x.new_zeros(self.batch * self.max_len, *x.shape[2:])
        return flat.index_copy(0, self.index, x[0]).unflatten(0, (self.batch, self.max_len))

    def positions(self, starts) -> np.ndarray:
        """(total,) where each packed frame sits in a row whose utterance k starts at
        ``starts[k]`` (ints; a row with gaps between utterances, e.g. a subsampled packed
        input), on the host: an ``extra`` of :func:`to_device`."""
        return np.repeat(np.asarray(starts, dtype=np.int64), self.lens_host) + self.offset_host

    def reverse(self, x: torch.Tensor) -> torch.Tensor:
        """Reverse every utterance of a packed (1, total, ...) tensor within itself."""
        return x.index_select(1, self.reverse_index)

    def padded(self, fn, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Run ``fn(padded_x, *args, **kwargs)`` on the unpacked batch and pack its output."""
        return self.pack(fn(self.unpack(x), *args, **kwargs))


def to_device(packings: list, device, extra: list = ()) -> list:
    """Place the maps of ``packings`` (``Packing.host``) and the int64 arrays ``extra`` on
    ``device`` in one copy; returns ``extra`` as tensors."""
    tensors = _to_device([a for p in packings for a in p._host] + list(extra), device)
    for p in packings:
        p._place(tensors[:4])
        tensors = tensors[4:]
    return tensors


def _to_device(arrays, device) -> list:
    """int64 numpy arrays as tensors on ``device``, in one copy.  Plain (pageable) memory: the
    maps are built at the start of a step, while the GPU has nothing to do, and pinning them
    cost 3.3 ms per step on an H100 machine's host (torch.profiler) for a ~0.3 MB copy."""
    flat = torch.from_numpy(np.concatenate(arrays))
    if device is not None and torch.device(device).type != "cpu":
        flat = flat.to(device)
    return list(flat.split([a.size for a in arrays]))


class RowPacking:
    """The part of a :class:`Packing` that layers running a packed row natively read
    (``seq_idx`` and :meth:`reverse`), made of tensors only: what a CUDA graph of the layers
    takes as inputs.  ``pad_to(frames)`` appends zero frames as one more utterance, so that one
    graph serves every batch whose packed length falls in its bucket."""

    def __init__(self, seq_idx: torch.Tensor, reverse_index: torch.Tensor):
        self.seq_idx, self.reverse_index = seq_idx, reverse_index

    @classmethod
    def of(cls, packing: Packing) -> "RowPacking":
        return cls(packing.seq_idx, packing.reverse_index)

    def pad_to(self, frames: int) -> "RowPacking":
        total = self.seq_idx.shape[1]
        extra = frames - total
        if extra < 0:
            raise ValueError(f"RowPacking.pad_to({frames}): the row already has {total} frames")
        # the added frames: one utterance after the last one, reversed within itself
        seq_idx = torch.cat([self.seq_idx, (self.seq_idx[:, -1:] + 1).expand(-1, extra)], 1)
        tail = torch.arange(frames - 1, total - 1, -1, device=self.reverse_index.device)
        return RowPacking(seq_idx, torch.cat([self.reverse_index, tail]))

    def reverse(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.reverse_index)

    def padded(self, *args, **kwargs):
        raise RuntimeError("a layer that runs a packed row by padding (Mamba v1, attention, "
                           "Mamba2 with packed_mixer: padded) cannot run inside a "
                           "CUDA graph of a packed row")
