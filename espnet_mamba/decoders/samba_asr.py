"""Samba-ASR decoder: a causal Mamba decoder joined to the encoder by a Mamba cross-connection.

The paper does not publish the cross-connection; it says that it "allows focusing on relevant
audio segments during token prediction while maintaining autoregressive causality".  Two
readings are implemented, chosen by the model option ``cross_connection`` (README, "The Mamba
cross-connection"; ARCHITECTURE.md, "The samba_asr decoder"):

``prefix`` (every model trained before the option existed; the default until version 0.3): a
*speech prefix*.
The encoder output is projected to the decoder width, read once in both directions by a
bidirectional Mamba block (the "speech summary", as in MADEON; optional), and then scanned by
every decoder Mamba layer *before* the tokens, as if it were the start of the sequence.  The
state each layer ends the speech in is what conditions the tokens.  So

  * training is one causal scan per layer over [speech ; tokens] (speech left-aligned so that
    the tokens follow each utterance's own last frame; padded frames are identity steps);
  * decoding scans the speech once per utterance (``start_state``) and then costs O(1) per
    token: a fixed-size (conv_state, ssm_state) per layer, no attention, no growing cache.

  Its limit: the whole recording reaches the tokens only through one fixed-size state per
  layer, so what a token can read of the speech does not grow with the recording.

``attention`` (the default since version 0.3, without the speech summary: on the mini recipe it
matched ``prefix`` on single utterances and kept long recordings' WER far lower, in two trainings
each; README, "The Mamba cross-connection"): every decoder block is the causal Mamba mixer over
the tokens followed by a cross-attention sub-layer (pre-RMSNorm residual,
modules/cross_attention.py) whose queries are the tokens and whose keys/values are the
(projected, optionally summarised) speech.  Every
token can read any frame, so the speech stays reachable however long the recording.  Decoding
keeps the fixed-size Mamba states per hypothesis plus the utterance's keys/values, projected once
and shared by its hypotheses (decoders/memory.py): O(T) work per token over T encoder frames,
no cache that grows with the output.

``prefix_attention``: both, the speech prefix scan and the cross-attention sub-layer (which
reads the speech from the token positions only).

The CUDA-graph decoding step (graphs/decoding.py, execution option ``cuda_graphs``) runs every
reading: the attention readings hand it the shared speech memory as speech_mamba does.

Evidence (mini_synth recipe, one training each, 2-core CPU; commands and commits in
ARCHITECTURE.md): ``attention`` (no speech summary, 1.726 M parameters) against ``prefix``
(1.814 M), WER %: single utterances 46.8 vs 46.7, 30 s 56.4 vs 79.2, 60 s 50.5 vs 85.9, 120 s
61.7 vs 87.6; ``prefix_attention`` (1.726 M) 44.5, 75.0, 85.4, 88.1.  The default stays
``prefix`` (the reading of every packed model so far).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from typeguard import typechecked

from espnet_mamba.decoders.memory import SpeechMemory
from espnet_mamba.decoders.recurrent import RecurrentDecoder
from espnet_mamba.modules import option_rules as rules
from espnet_mamba.modules.block import Residual
from espnet_mamba.modules.cross_attention import CrossAttention
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


CROSS_CONNECTIONS = ("prefix", "attention", "prefix_attention")
DEFAULT_CROSS_CONNECTION = "attention"
DEFAULT_CROSS_ATTENTION_HEADS = 4


def _cross_attention_heads(value, conf):
    """Heads of the cross-attention: only with a cross_connection that has one; they must
    divide the width."""
    how = conf.get("cross_connection", DEFAULT_CROSS_CONNECTION)
    if value is None:
        return None
    if how not in CROSS_CONNECTIONS or "attention" not in how:
        return (f"only used with cross_connection 'attention' or 'prefix_attention' (it is "
                f"{rules.show(how)}); delete it or set it to null")
    problem = rules.integer(1)(value, conf)
    width = conf.get("encoder_output_size")
    if problem or not isinstance(width, int) or width % value == 0:
        return problem
    return f"must divide encoder_output_size = {width}"


@named_options("decoder_conf", {
    "cross_connection": rules.choice(CROSS_CONNECTIONS),
    "cross_attention_heads": _cross_attention_heads,
})
class SambaASRDecoder(RecurrentDecoder):
    # What a config that records its espnet_mamba version (integration/resolved_config.py: such
    # a config lists every option its version had) means by an option it lacks: that version
    # predates the option, so its model is built as it was then.
    OLD_CONFIG_DEFAULTS = {"cross_connection": "prefix"}

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
        speech_summary: bool = False,
        cross_connection: str = DEFAULT_CROSS_CONNECTION,
        cross_attention_heads: Optional[int] = None,
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
        self.cross_connection = cross_connection
        self.speech_prefix = cross_connection in ("prefix", "prefix_attention")
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
        # after each decoder block's mixer (no such module in a prefix model: its parameter
        # names stay those of the models trained before the option existed)
        self.cross_attention = (
            nn.ModuleList(CrossAttention(d, cross_attention_heads or
                                         DEFAULT_CROSS_ATTENTION_HEADS, dropout_rate,
                                         execution=execution)
                          for _ in range(num_blocks))
            if "attention" in cross_connection else None)
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
        speech, speech_mask = self._speech(hs_pad, hlens)
        tokens = self.embed(ys_in_pad)
        token_mask = lengths_to_mask(ys_in_lens, ys_in_pad.shape[1])
        if self.speech_prefix:
            aligned, aligned_valid = _right_to_left_aligned(speech, hlens)
            x = torch.cat([aligned, tokens], dim=1)
            mask = torch.cat([aligned_valid, token_mask], 1)
            first = hs_pad.shape[1]  # the first token's position
        else:
            x, mask, first = tokens, token_mask, 0
        for i, layer in enumerate(self.decoders):
            x = layer(x, mask=mask)
            if self.cross_attention is not None:
                # queries from the token positions only: the speech prefix (if any) is read by
                # the scan, and its positions feed the next layer's scan unchanged
                read = self.cross_attention[i](x[:, first:], speech, speech_mask)
                x = torch.cat([x[:, :first], read], dim=1) if first else read
        x = self.after_norm(x[:, first:])
        return self.output_layer(x), ys_in_lens

    def start_state(self, memory, lengths):
        x, mask = self._speech(memory, lengths)
        if self.speech_prefix:
            states, h = [], x
            for layer in self.decoders:
                y, state = layer.layer(layer.norm(h), mask=mask, return_final_state=True)
                h = h + layer.dropout(y)
                states.append(state)
            recurrent = tuple(states)
        else:
            recurrent = tuple(layer.layer.init_state(memory.shape[0], memory.device, x.dtype)
                              for layer in self.decoders)
        if self.cross_attention is None:
            return recurrent, None
        return recurrent, SpeechMemory([attn.project(x) for attn in self.cross_attention], mask)

    def step(self, tokens, recurrent, memory):
        x = self.embed(tokens)
        new = []
        for i, (layer, state) in enumerate(zip(self.decoders, recurrent)):
            x, state = layer.step(x, state)
            if memory is not None:
                keys, values = memory.keys_values[i]
                x = self.cross_attention[i].attend_step(x, keys, values, memory.key_mask)
            new.append(state)
        return self.output_layer(self.after_norm(x)), tuple(new)
