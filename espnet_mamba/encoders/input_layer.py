"""ESPnet's input layers (conv subsampling, linear) by name, with ESPnet's too-short check,
and the same layers run on a packed batch (``packed``: the valid frames only)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from espnet2.legacy.nets.pytorch_backend.transformer import subsampling as sub
from espnet_mamba.modules.packing import Packing, to_device
from espnet_mamba.modules.padding import lengths_to_mask

# name -> (class, frames the class needs at least).  No positional encoding: Mamba layers
# carry position through their recurrence.
CONV_LAYERS = {
    "conv1d2": (sub.Conv1dSubsampling2, 5),
    "conv2d": (sub.Conv2dSubsampling, 7),
    "conv2d1": (sub.Conv2dSubsampling1, 5),
    "conv2d2": (sub.Conv2dSubsampling2, 7),
    "conv2d6": (sub.Conv2dSubsampling6, 11),
    "conv2d8": (sub.Conv2dSubsampling8, 15),
}
INPUT_LAYERS = (*CONV_LAYERS, "linear", None)


class InputLayer(nn.Module):
    """forward(xs (b, t, idim), masks (b, 1, t)) -> (xs (b, t', odim), masks (b, 1, t')).

    ``recompute``: a conv subsampling keeps no activation of its convolutions for the backward
    pass but its input, and recomputes them there (:class:`RecomputedConvs`)."""

    def __init__(self, name: str | None, input_size: int, output_size: int,
                 dropout_rate: float, recompute: bool = False):
        super().__init__()
        if name not in INPUT_LAYERS:
            raise ValueError(f"unknown input_layer {name!r}; valid: {INPUT_LAYERS}")
        self.name, self.min_frames, self.input_size = name, 1, input_size
        self.time_convs = []  # (kernel, stride) of each convolution along time
        if input_size < 1 or output_size < 1:
            raise ValueError(f"input_size and output_size must be positive, got {input_size} "
                             f"and {output_size}")
        if recompute and name not in CONV_LAYERS:
            raise ValueError(f"recompute_input_layer: true needs a conv subsampling input layer "
                             f"({', '.join(CONV_LAYERS)}), the only one that keeps large "
                             f"activations; got input_layer: {name or 'null'}")
        if name in CONV_LAYERS:
            cls, self.min_frames = CONV_LAYERS[name]
            # 2-D convolutions subsample the feature axis as they do time: same minimum
            if name.startswith("conv2d") and input_size < self.min_frames:
                raise ValueError(f"input_layer={name} needs input_size >= {self.min_frames} "
                                 f"features per frame (it subsamples the feature axis too), "
                                 f"got {input_size}; use conv1d2 or linear for fewer")
            self.embed = cls(input_size, output_size, dropout_rate, pos_enc=nn.Identity())
            self.time_convs = _time_convs(self.embed)
            if recompute:  # same children, same state-dict keys
                self.embed.conv = RecomputedConvs(*self.embed.conv)
        elif name == "linear":
            self.embed = nn.Sequential(nn.Linear(input_size, output_size),
                                       nn.LayerNorm(output_size), nn.Dropout(dropout_rate))
        else:
            if input_size != output_size:
                raise ValueError(f"input_layer=None needs input_size == output_size, got "
                                 f"{input_size} and {output_size}")
            self.embed = None

    def forward(self, xs, masks):
        self._check_frames(xs)
        if self.name in CONV_LAYERS:
            return self.embed(xs, masks)
        return (xs if self.embed is None else self.embed(xs)), masks

    def _check_frames(self, xs):
        if xs.shape[1] < self.min_frames:
            raise sub.TooShortUttError(
                f"has {xs.shape[1]} frames and is too short for subsampling "
                f"(input_layer={self.name} needs at least {self.min_frames} frames)",
                xs.shape[1], self.min_frames)

    def output_lengths(self, lengths):
        """Frames out for ``lengths`` frames in (ints or a tensor), as ESPnet's subsampled mask
        counts them: only outputs whose convolutions read valid frames alone."""
        if self.time_convs is None:
            raise NotImplementedError(f"input_layer={self.name}: padded or dilated "
                                      "convolutions, output lengths unknown")
        for kernel, stride in self.time_convs:
            lengths = (lengths - kernel) // stride + 1
        return lengths.clamp(min=0) if isinstance(lengths, torch.Tensor) else max(lengths, 0)

    def packed(self, xs: torch.Tensor, lengths: list):
        """forward() on the valid frames of a padded batch laid end to end.

        ``lengths``: the utterances' frames, as Python ints (check_input returns them).
        Returns (row (1, total, output_size), the :class:`Packing` of the output frames), or
        None when no utterance keeps a frame after the subsampling (a packed row of no frames
        has nothing to run: the caller takes the padded route, ESPnet's zero lengths).  The
        frames and their gradients are those of forward() on the padded batch, packed: each
        utterance's input starts at a multiple of the subsampling's stride, and an output frame
        of the row reads the same input frames as its counterpart in the padded batch (the
        frames ESPnet's mask counts valid read their own utterance only).  The convolutions so
        cost the valid frames (plus < stride per utterance), not the padded batch's.
        """
        self._check_frames(xs)
        if self.time_convs is None:  # an input layer of unknown geometry: padded, then packed
            ilens = torch.tensor(lengths, device=xs.device)
            xs, masks = self.forward(xs, lengths_to_mask(ilens, xs.shape[1])[:, None])
            packing = Packing(masks.squeeze(1).sum(-1).tolist(), xs.shape[1], xs.device)
            return (packing.pack(xs), packing) if packing.total else None
        out_lengths = [self.output_lengths(n) for n in lengths]
        if not any(out_lengths):
            return None
        stride = math.prod(s for _, s in self.time_convs)
        slots = [_round_up(n, stride) for n in lengths]
        frames = _round_up(xs.shape[1], stride)
        # every index map first, in one copy while the GPU is idle (it then waits for nothing)
        inp = Packing.host(slots, frames)
        out = Packing.host(out_lengths, self.output_lengths(xs.shape[1]))
        extra = []  # per-frame layers: every output frame is already in place
        if self.time_convs:
            starts = [0]
            for n in slots[:-1]:
                starts.append(starts[-1] + n // stride)
            extra = [out.positions(starts)]
        where = to_device([inp, out], xs.device, extra)
        row = inp.pack(F.pad(xs, (0, 0, 0, frames - xs.shape[1])))
        if self.name in CONV_LAYERS:
            row = self.embed(row, None)[0]
        elif self.embed is not None:
            row = self.embed(row)
        return (row.index_select(1, where[0]) if where else row), out


class RecomputedConvs(nn.Sequential):
    """ESPnet's subsampling convolutions (``embed.conv``) under activation checkpointing.

    The first convolution runs at half the frame rate with ``output_size`` channels: for
    conv2d at 300 s and d512 its output is 512 x 15k x 39 values, 0.56 GiB in bf16, which the
    second convolution keeps for its backward pass, as much as several Mamba layers keep.  Here
    only the features are kept and the convolutions run again in the backward pass: one more
    forward of the subsampling, 3-11 % of a graphed training step on an H100
    (docs/performance.md).  Gradients are the same; the second forward has the same
    autocast state and RNG state (torch.utils.checkpoint records both).
    """

    def forward(self, x):
        if torch.is_grad_enabled() and (x.requires_grad or any(
                p.requires_grad for p in self.parameters())):
            return checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _time_convs(embed: nn.Module):
    """(kernel, stride) along time of each convolution of an ESPnet subsampling module, or None
    where one is padded or dilated (its outputs would then read frames across utterances)."""
    convs = [m for m in embed.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    if any(m.padding[0] != 0 or m.dilation[0] != 1 for m in convs):
        return None
    return [(m.kernel_size[0], m.stride[0]) for m in convs]


def check_input(xs: torch.Tensor, ilens: torch.Tensor, input_size: int) -> tuple:
    """Refuse malformed encoder input with a message that names the problem (instead of a shape
    error deep inside a convolution or a silently empty utterance), and return (the lengths as
    Python ints, the batch rows whose features are not all finite): one wait for the GPU serves
    every check and the host's view of the batch (packing builds its index maps from it).

    xs: (batch, frames, input_size) floating point; ilens: (batch,) integers,
    0 < ilens <= frames.  An utterance with 0 frames (empty audio) is a TooShortUttError, as
    for the whole batch being shorter than the subsampling needs, so that ESPnet's inference
    handles both alike.  Rows with NaN/inf are only reported: what to do with them depends on
    whether this is a training step or decoding (encoders/stack.py).
    """
    if not isinstance(xs, torch.Tensor) or xs.dim() != 3:
        shape = tuple(xs.shape) if isinstance(xs, torch.Tensor) else type(xs).__name__
        raise ValueError(f"encoder input must be features of shape (batch, frames, "
                         f"{input_size}), got {shape}")
    if not xs.is_floating_point():
        raise ValueError(f"encoder input must be floating point features, got {xs.dtype}")
    batch, frames, dim = xs.shape
    if dim != input_size:
        raise ValueError(f"encoder input has {dim} features per frame, but the encoder was "
                         f"built for input_size={input_size} (front-end n_mels / feature "
                         f"dimension of the config); got shape {tuple(xs.shape)}")
    if not isinstance(ilens, torch.Tensor) or ilens.dim() != 1 or ilens.shape[0] != batch:
        shape = tuple(ilens.shape) if isinstance(ilens, torch.Tensor) else type(ilens).__name__
        raise ValueError(f"encoder input lengths must be a 1-D tensor of {batch} lengths "
                         f"(one per utterance), got {shape}")
    if ilens.is_floating_point() or ilens.is_complex():
        raise ValueError(f"encoder input lengths must be integers, got {ilens.dtype}")
    if batch == 0:
        raise ValueError("encoder input is an empty batch (batch size 0)")
    # per row, riding on the lengths' copy to the host: no extra GPU sync
    finite = torch.isfinite(xs).flatten(1).all(1).to(device=ilens.device, dtype=torch.long)
    host = torch.cat([ilens.long(), finite]).tolist()  # the one sync
    lengths, finite = host[:batch], host[batch:]
    if min(lengths) < 0 or max(lengths) > frames:
        raise ValueError(f"encoder input lengths must lie in 0..{frames} (the padded number of "
                         f"frames), got {lengths}")
    if 0 in lengths:
        empty = [i for i, n in enumerate(lengths) if n == 0]
        raise sub.TooShortUttError(
            f"has 0 frames (empty audio) at batch index {empty}", 0, 1)
    return lengths, [i for i, ok in enumerate(finite) if not ok]
