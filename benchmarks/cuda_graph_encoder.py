"""CUDA graphs of an encoder's layer stack for training (an experiment of issue 6, not yet part
of the package): benchmarks/encoder_gpu.py's ``samba_asr_graphed`` / ``speech_mamba_graphed``
variants wrap the encoder in :class:`GraphedEncoder`.

Why: at 15-30 s of audio a training step of our encoders is bound by host work, not by the GPU
(session 3's profile: ~45 ms of GPU work in a ~150-230 ms step; mamba-ssm's Python-level
``mamba_inner_fn`` forward and backward alone cost ~3.6 ms of host time per mixer).  For a
fixed input shape, ``torch.cuda.make_graphed_callables`` captures the layers' forward and
backward once and replays each as one launch.  The input checks and the input layer (conv
subsampling, with its too-short check) run eagerly; the layers and the final norm are graphed,
one capture per (batch, frames, dtype, autocast) shape, sharing the encoder's parameters.
Training steps only (eval mode or no_grad: the plain encoder).  If a capture fails, the error is
kept in ``capture_error`` and that shape runs eagerly (a benchmark records it: no eager number
under a graphed name).

Caveats of make_graphed_callables: the parameters' ``.grad`` are the graph's static buffers, so
clear them with ``zero_grad(set_to_none=True)`` (as encoder_gpu.py does) and do not accumulate
gradients over steps; a second forward of one shape before the first one's backward overwrites
the first one's activations.

What it does not do yet: ESPnet's batches vary in length, so a trainer would need a few
length buckets (pad up to the bucket) and a memory pool shared between the buckets' graphs;
intermediate CTC and packed batches are not graphed (eager, as in StackEncoder.forward).
Off CUDA, with intermediate CTC or packing, it is the plain encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from espnet_mamba.encoders.input_layer import check_features, check_input
from espnet_mamba.modules.block import Stream
from espnet_mamba.modules.padding import lengths_to_mask


class _Layers(nn.Module):
    """StackEncoder's layer loop and final norm, as one callable of tensors."""

    def __init__(self, enc):
        super().__init__()
        self.encoders, self.after_norm = enc.encoders, enc.after_norm

    def forward(self, xs, lengths, valid):
        stream = Stream(None, xs)
        for layer in self.encoders:
            stream = layer(stream, lengths, valid, None)
        return stream.normed(self.after_norm)[0]


class GraphedEncoder(nn.Module):
    def __init__(self, enc, warmup: int = 3):
        super().__init__()
        self.enc, self.warmup = enc, warmup
        self.graphed = {}
        self.captures = 0  # graphs captured so far (a benchmark checks the graphs ran)
        self.capture_error = None  # the first failed capture, if one failed

    # encoder_gpu.py's step_fn: autocast without its weight cache, as make_graphed_callables needs
    autocast_cache = False

    def output_size(self):
        return self.enc.output_size()

    def clear(self):
        """Drop the captured graphs (and their memory pools) and their count, e.g. between
        benchmark settings."""
        self.graphed.clear()
        self.captures, self.capture_error = 0, None

    def forward(self, xs_pad, ilens, prev_states=None):
        enc = self.enc
        if (not xs_pad.is_cuda or not (self.training and torch.is_grad_enabled())
                or enc.interctc_layer_idx or enc.pack_sequences
                or torch.is_autocast_cache_enabled() and torch.is_autocast_enabled("cuda")):
            # graphs for training steps only (make_graphed_callables captures a backward);
            # it refuses autocast's weight cache: run under
            # torch.autocast(..., cache_enabled=False) to be graphed
            return enc(xs_pad, ilens, prev_states)
        check_input(xs_pad, ilens, enc.embed.input_size)  # as StackEncoder.forward
        check_features(xs_pad)
        masks = lengths_to_mask(ilens.to(xs_pad.device), xs_pad.shape[1])[:, None, :]
        xs, masks = enc.embed(xs_pad, masks)
        valid = masks.squeeze(1)
        lengths = valid.sum(-1)
        layers = self._layers_for(xs, lengths, valid)
        return layers(xs, lengths, valid), lengths, None

    def _layers_for(self, xs, lengths, valid):
        autocast = torch.is_autocast_enabled("cuda")
        key = (tuple(xs.shape), xs.dtype, xs.requires_grad,
               torch.get_autocast_dtype("cuda") if autocast else None)
        if key not in self.graphed:
            layers = _Layers(self.enc)  # make_graphed_callables replaces its forward
            sample = (xs.detach().clone().requires_grad_(xs.requires_grad), lengths.clone(),
                      valid.clone())
            try:
                self.graphed[key] = torch.cuda.make_graphed_callables(
                    layers, sample, num_warmup_iters=self.warmup)
                self.captures += 1
            except Exception as err:  # noqa: BLE001 - recorded; this shape runs eagerly
                if "out of memory" in str(err):
                    raise
                self.capture_error = self.capture_error or f"{type(err).__name__}: {err}"
                self.graphed[key] = _Layers(self.enc)
        return self.graphed[key]
