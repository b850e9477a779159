"""Streaming a causal encoder: feature chunks in, the encoder output frames that are final out.

A Samba-ASR encoder built with ``bidirectional: false`` reads no future frame past its input
layer's window, so an output frame is final as soon as the input frames of its window have
arrived.  :class:`StreamingEncoder` keeps what the next chunk needs, of fixed size whatever
the number of chunks:

* the input layer's pending frames: a convolution subsampling with total stride ``S`` and
  receptive field ``R`` frames (conv2d: S 4, R 7; conv2d6: 6, 11; conv2d8: 8, 15) makes output
  frame ``j`` from input frames ``j*S .. j*S + R - 1``; fewer than ``R`` frames wait for the
  next chunk;
* each layer's mixer state (``init_state`` / ``step`` of modules/mamba.py, mamba2.py): the
  convolution's last inputs and the scan state.

The residual path (pre-norm, x + mixer(norm(x)), final RMSNorm) is per frame.  Every output
frame is that of the full-utterance forward (same arithmetic; fp32 rounding apart), and the
output frames of a whole utterance are as many as the full forward gives.

Each layer runs a chunk's frames at once from its state (``step_chunk`` of the mixers: the
convolution over the state's last inputs and the chunk, the scan from the state), or one
frame at a time (``step``, ``frame_by_frame=True``); the same results up to rounding.
"""

from __future__ import annotations

import torch
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from espnet_mamba.encoders.input_layer import CONV_LAYERS
from espnet_mamba.encoders.stack import StackEncoder
from espnet_mamba.modules.bidirectional import Bidirectional
from espnet_mamba.modules.state import map_state


def input_window(encoder: StackEncoder) -> tuple:
    """(stride S, receptive field R) along time of the encoder's input layer: output frame j
    reads input frames j*S .. j*S + R - 1.  Raises for an input layer whose geometry is not a
    chain of unpadded, undilated convolutions."""
    embed = encoder.embed
    if embed.name in CONV_LAYERS:
        if embed.time_convs is None:
            raise ValueError(f"input_layer: {embed.name} has padded or dilated convolutions; "
                             "streaming needs unpadded ones (valid: "
                             f"{', '.join(CONV_LAYERS)}, linear, null)")
        stride, field = 1, 1
        for kernel, step in embed.time_convs:
            field += (kernel - 1) * stride
            stride *= step
        return stride, field
    return 1, 1  # linear / null: one frame in, one frame out


def check_streamable(encoder) -> None:
    """Raise a ValueError naming the option that makes ``encoder`` read future frames."""
    if not isinstance(encoder, StackEncoder):
        raise ValueError(  # noqa: TRY004 (a config choice, not a caller's type error)
            f"streaming needs a Samba-ASR encoder (encoder: samba_asr with "
            f"encoder_conf.bidirectional: false), got {type(encoder).__name__}")
    for i, layer in enumerate(encoder.encoders):
        mixer = getattr(layer, "layer", None)
        if isinstance(mixer, Bidirectional):
            raise ValueError(  # noqa: TRY004 (a config value)
                f"streaming needs a causal encoder, but {type(encoder).__name__} is "
                "bidirectional (encoder_conf.bidirectional: true): the backward mixer of each "
                "layer reads the utterance's future frames. Train with "
                "encoder_conf.bidirectional: false to stream")
        if not all(hasattr(mixer, name) for name in ("init_state", "step", "step_chunk")):
            raise ValueError(
                f"streaming needs layers that run one frame at a time from a recurrent state; "
                f"layer {i} of {type(encoder).__name__} ({type(mixer).__name__}) does not "
                "(encoder: samba_asr with encoder_conf.bidirectional: false streams)")
    if encoder.interctc_use_conditioning and encoder.interctc_layer_idx:
        raise ValueError("streaming does not take encoder_conf.interctc_use_conditioning: "
                         "true (its layers read a CTC posterior of the intermediate output)")
    input_window(encoder)


class StreamingEncoder:
    """Feeds a causal :class:`~espnet_mamba.encoders.stack.StackEncoder` chunk by chunk.

    ``stream(feats, is_final)``: feats (frames, input_size) or (1, frames, input_size), the
    next frames of one utterance (any number, 0 too); returns the output frames (n,
    output_size) that are final after them.  After ``is_final`` the utterance is over; the
    next call starts a new one (``reset`` does so at any time).

    The encoder must be in eval mode (dropout off), as for decoding.

    ``frame_by_frame``: run the mixers' ``step`` per frame instead of ``step_chunk`` once per
    chunk (same results up to rounding; ``step_chunk`` makes fewer, larger operations).
    """

    def __init__(self, encoder: StackEncoder, frame_by_frame: bool = False):
        check_streamable(encoder)
        self.encoder = encoder
        self.frame_by_frame = frame_by_frame
        self.stride, self.field = input_window(encoder)
        self.reset()

    def reset(self) -> None:
        self.pending: torch.Tensor | None = None  # input frames not yet consumed (1, n, idim)
        self.states: list | None = None  # one mixer state per layer
        self.frames_in = 0  # input frames of this utterance so far
        self.frames_out = 0  # output frames of this utterance so far

    def state_numel(self) -> int:
        """Elements held between chunks (pending frames and mixer states)."""
        n = 0 if self.pending is None else self.pending.numel()
        sizes = []
        for state in self.states or []:
            map_state(lambda t: sizes.append(t.numel()) or t, state)
        return n + sum(sizes)

    def _check(self, feats: torch.Tensor) -> torch.Tensor:
        size = self.encoder.embed.input_size
        if not isinstance(feats, torch.Tensor):
            raise TypeError(f"streaming encoder input must be a tensor of shape (frames, "
                            f"{size}), got {type(feats).__name__}")
        if feats.dim() == 3 and feats.shape[0] == 1:
            feats = feats[0]
        if feats.dim() != 2 or feats.shape[1] != size:
            raise ValueError(f"streaming encoder input must have shape (frames, {size}) or "
                             f"(1, frames, {size}) (one utterance; input_size={size}), got "
                             f"{tuple(feats.shape)}")
        if not feats.is_floating_point():
            raise ValueError(f"streaming encoder input must be floating point, got "
                             f"{feats.dtype}")
        if not torch.isfinite(feats).all():
            # as the full forward in decoding: the one error ESPnet's inference skips an
            # utterance for (encoders/stack.py, _nonfinite)
            first, last = self.frames_in, self.frames_in + len(feats) - 1
            self.reset()
            raise TooShortUttError(
                f"has non-finite values (NaN/inf) in the input (frames {first}..{last}); check "
                "the audio and the feature statistics (feats_stats.npz)", 0, 0)
        return feats

    @torch.no_grad()
    def __call__(self, feats: torch.Tensor, is_final: bool = False) -> torch.Tensor:
        enc = self.encoder
        if enc.training:
            raise RuntimeError("StreamingEncoder: call encoder.eval() first (streaming is for "
                               "decoding; dropout would differ from frame to frame)")
        feats = self._check(feats)
        self.frames_in += len(feats)
        x = feats[None]
        if self.pending is not None:
            x = torch.cat([self.pending, x.to(self.pending.dtype)], dim=1)
        n = x.shape[1]
        count = (n - self.field) // self.stride + 1 if n >= self.field else 0
        if count:
            window = x[:, :(count - 1) * self.stride + self.field]
            self.pending = x[:, count * self.stride:]
            out = self._layers(self._embed(window))
        else:
            self.pending = x
            out = x.new_zeros(0, enc.output_size())
        if is_final:
            total = self.frames_in
            self.reset()
            if total < enc.embed.min_frames:
                raise TooShortUttError(
                    f"has {total} frames and is too short for subsampling "
                    f"(input_layer={enc.embed.name} needs at least {enc.embed.min_frames} "
                    "frames)", total, enc.embed.min_frames)
        return out

    def _embed(self, window: torch.Tensor) -> torch.Tensor:
        embed = self.encoder.embed
        if embed.name in CONV_LAYERS:
            return embed.embed(window, None)[0]
        return window if embed.embed is None else embed.embed(window)

    def _layers(self, xs: torch.Tensor) -> torch.Tensor:
        """(1, k, d) embedded frames -> (k, d) encoder outputs, the mixer states carried."""
        enc = self.encoder
        if self.states is None:
            self.states = [layer.layer.init_state(1, device=xs.device, dtype=xs.dtype)
                           for layer in enc.encoders]
        x = xs
        for i, layer in enumerate(enc.encoders):
            if self.frame_by_frame:
                h = layer.norm(x[0])  # per frame: one call for the chunk
                ys, state = [], self.states[i]
                for t in range(len(h)):
                    y, state = layer.layer.step(h[t:t + 1], state)
                    ys.append(y)
                self.states[i] = state
                x = x + torch.cat(ys, dim=0).to(x.dtype)[None]
            else:
                x, self.states[i] = layer.step_chunk(x, self.states[i])
        return enc.after_norm(x[0])


def stream_encoder(encoder: StackEncoder, chunks, is_final_last: bool = True) -> torch.Tensor:
    """Convenience: the concatenated streaming output of ``chunks`` (feature tensors)."""
    streamer = StreamingEncoder(encoder)
    chunks = list(chunks)
    outs = [streamer(c, is_final=is_final_last and i == len(chunks) - 1)
            for i, c in enumerate(chunks)]
    return torch.cat(outs, dim=0) if outs else torch.zeros(0, encoder.output_size())


__all__ = ["StreamingEncoder", "check_streamable", "input_window", "stream_encoder"]
