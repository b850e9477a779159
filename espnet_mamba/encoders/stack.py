"""What every encoder here shares: ESPnet's encoder contract around a stack of layers.

input layer (conv subsampling) -> layers(x, lengths, mask, packing) -> final RMSNorm, plus
ESPnet's intermediate-CTC options.  Subclasses only say how to build one layer.

``pack_sequences``: after the subsampling, the layers see the valid frames of the batch end to
end (1, total, d) instead of a padded batch (see modules/packing.py); outputs are unpacked again.
Exact either way.  Meant to be faster with Mamba2 mixers on CUDA, whose kernels take the
utterance boundaries (``seq_idx``); that path is off for now (see modules/mamba2.py).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet_mamba.encoders.input_layer import InputLayer, check_features, check_input
from espnet_mamba.modules.factory import check_options, mixer_options, MIXERS
from espnet_mamba.modules.block import Stream
from espnet_mamba.modules.norm import RMSNorm
from espnet_mamba.modules.packing import Packing
from espnet_mamba.modules.padding import lengths_to_mask
from espnet_mamba.modules.strict_load import StrictLoadMixin


def resolve_mixer_conf(mixer: str, d_state: int, d_conv: int, expand: float,
               extra: Optional[dict]) -> dict:
    """Constructor options of the mixer: the common three plus ``mixer_conf`` extras."""
    extra = dict(extra or {})
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; valid: {', '.join(MIXERS)}")
    check_options(f"mixer_conf of {mixer}", extra,
                  set(mixer_options(MIXERS[mixer])) - {"d_state", "d_conv", "expand", "backend"})
    return {"d_state": d_state, "d_conv": d_conv, "expand": expand, **extra}


class StackEncoder(StrictLoadMixin, AbsEncoder):
    def __init__(self, input_size: int, output_size: int, input_layer: Optional[str],
                 dropout_rate: float, layers: List[nn.Module], interctc_layer_idx: List[int],
                 interctc_use_conditioning: bool, pack_sequences: bool, backend: Optional[str]):
        super().__init__()
        self._output_size = output_size
        self.embed = InputLayer(input_layer, input_size, output_size, dropout_rate)
        self.encoders = nn.ModuleList(layers)
        self.after_norm = RMSNorm(output_size, backend=backend)
        bad = [i for i in interctc_layer_idx if not 0 < i < len(layers)]
        if bad:
            raise ValueError(f"interctc_layer_idx {bad} out of range 1..{len(layers) - 1}")
        self.interctc_layer_idx = list(interctc_layer_idx)
        self.interctc_use_conditioning = interctc_use_conditioning
        self.conditioning_layer = None  # set by ESPnet's model when conditioning is on
        self.pack_sequences = pack_sequences

    def output_size(self) -> int:
        return self._output_size

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor,
                prev_states: torch.Tensor = None, ctc=None,
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        check_input(xs_pad, ilens, self.embed.input_size)
        check_features(xs_pad)
        # (batch, 1, frames), True on valid frames; a broadcast compare, O(batch x frames)
        masks = lengths_to_mask(ilens.to(xs_pad.device), xs_pad.shape[1])[:, None, :]
        xs, masks = self.embed(xs_pad, masks)
        valid = masks.squeeze(1)
        lengths = valid.sum(-1)
        packing = Packing(lengths, xs.shape[1]) if self.pack_sequences and len(xs) > 1 else None
        unpack = packing.unpack if packing else (lambda t: t)
        if packing:
            xs = packing.pack(xs)
        intermediate = []
        stream = Stream(None, xs)  # residual adds fused into the next norm (modules/block.py)
        for idx, layer in enumerate(self.encoders, start=1):
            stream = layer(stream, lengths, valid, packing)
            if idx in self.interctc_layer_idx:
                out, xs = stream.normed(self.after_norm)
                intermediate.append((idx, unpack(out)))
                if self.interctc_use_conditioning:
                    xs = xs + self.conditioning_layer(ctc.softmax(out))
                # xs is the (fp32) residual; the next layer reads the norm in the layers' dtype
                stream = Stream(None, xs, 0.0, out.dtype)
        xs = unpack(stream.normed(self.after_norm)[0])
        if intermediate:
            return (xs, intermediate), lengths, None
        return xs, lengths, None
