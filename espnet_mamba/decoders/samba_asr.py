"""Samba-ASR decoder: a causal Mamba decoder joined to the encoder by a Mamba cross-connection.

Interpretation (the paper does not publish the mechanism; see README): the cross-connection is a
*speech prefix*.  The encoder output is projected to the decoder width, read once in both
directions by a bidirectional Mamba block (the "speech summary", as in MADEON; optional), and
then scanned by every decoder Mamba layer *before* the tokens, as if it were the start of the
sequence.  The state each layer ends the speech in is what conditions the tokens.  So

  * training is one causal scan per layer over [speech ; tokens] (speech left-aligned so that
    the tokens follow each utterance's own last frame; padded frames are identity steps);
  * decoding scans the speech once per utterance (``start_state``) and then costs O(1) per
    token: a fixed-size (conv_state, ssm_state) per layer, no attention, no growing cache.

Why: full cross-attention costs O(T) per token and a KV-cache grows with the output; the paper
claims linear cost and an attention-free decoder, which a prefix scan gives exactly.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from typeguard import typechecked

from espnet_mamba.decoders.recurrent import RecurrentDecoder
from espnet_mamba.modules.block import Residual
from espnet_mamba.modules.execution import Execution
from espnet_mamba.modules.factory import build_mixer, named_options, resolve_mixer_conf
from espnet_mamba.modules.norm import RMSNorm
from espnet_mamba.modules.padding import lengths_to_mask


def _right_to_left_aligned(x, lengths):
    """Move each right-padded sequence to end at the last frame (padding first)."""
    shift = x.shape[1] - lengths  # frames of left padding
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    src = (t - shift[:, None]).clamp(min=0)
    aligned = torch.gather(x, 1, src[..., None].expand_as(x))
    valid = t >= shift[:, None]
    return aligned * valid[..., None].to(x.dtype), valid


@named_options("decoder_conf")
class SambaASRDecoder(RecurrentDecoder):
    @typechecked
    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        mixer: str = "mamba",
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        mixer_conf: Optional[dict] = None,
        speech_summary: bool = True,
        # execution options (modules/execution.py): how this machine runs the weights
        backend: Optional[str] = None,
        fused_kernels: bool = True,
        merge_directions: str = "auto",
        cuda_graphs: bool = True,
    ):
        super().__init__()
        execution = self.execution = Execution(
            backend=(backend or "auto").lower(), fused_kernels=fused_kernels,
            merge_directions=merge_directions, cuda_graphs=cuda_graphs)
        d = encoder_output_size
        conf = resolve_mixer_conf(mixer, d_state, d_conv, expand, mixer_conf)
        self.embed = nn.Embedding(vocab_size, d)
        self.speech_proj = nn.Linear(encoder_output_size, d)
        self.speech_summary = (
            Residual(d, build_mixer(d, mixer, True, execution=execution, **conf), dropout_rate,
                     execution=execution)
            if speech_summary else None)
        self.decoders = nn.ModuleList(
            Residual(d, build_mixer(d, mixer, False, execution=execution, **conf),
                     dropout_rate, execution=execution)
            for _ in range(num_blocks))
        self.after_norm = RMSNorm(d, execution=execution)
        self.output_layer = nn.Linear(d, vocab_size)

    def _speech(self, hs, hlens):
        """Projected (and summarised) speech, right-padded, zero on padded frames."""
        mask = lengths_to_mask(hlens, hs.shape[1])
        x = self.speech_proj(hs) * mask[..., None].to(hs.dtype)
        if self.speech_summary is not None:
            x = self.speech_summary(x, hlens) * mask[..., None].to(x.dtype)
        return x, mask

    def forward(self, hs_pad: torch.Tensor, hlens: torch.Tensor, ys_in_pad: torch.Tensor,
                ys_in_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        speech, _ = self._speech(hs_pad, hlens)
        speech, speech_valid = _right_to_left_aligned(speech, hlens)
        x = torch.cat([speech, self.embed(ys_in_pad)], dim=1)
        mask = torch.cat([speech_valid, lengths_to_mask(ys_in_lens, ys_in_pad.shape[1])], 1)
        for layer in self.decoders:
            x = layer(x, mask=mask)
        x = self.after_norm(x[:, hs_pad.shape[1]:])
        return self.output_layer(x), ys_in_lens

    def start_state(self, memory, lengths):
        x, mask = self._speech(memory, lengths)
        states = []
        for layer in self.decoders:
            y, state = layer.layer(layer.norm(x), mask=mask, return_final_state=True)
            x = x + layer.dropout(y)
            states.append(state)
        return tuple(states), None

    def step(self, tokens, recurrent, memory):
        x = self.embed(tokens)
        new = []
        for layer, state in zip(self.decoders, recurrent):
            x, state = layer.step(x, state)
            new.append(state)
        return self.output_layer(self.after_norm(x)), tuple(new)

