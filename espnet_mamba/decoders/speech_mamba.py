"""Speech-Mamba decoder (Gao & Chen): each layer is Mamba -> RMSNorm -> cross-attention over
the encoder output -> Mamba, every sub-layer a pre-RMSNorm residual unit; causal Mamba mixers.

Decoding state per hypothesis: the two Mamba states of every layer (fixed size) plus a shared
reference to the utterance's projected keys/values (computed once in ``start_state``), so a
token costs one attention read of the speech and no cache that grows with the output.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from typeguard import typechecked

from espnet_mamba.decoders.memory import SpeechMemory
from espnet_mamba.decoders.recurrent import RecurrentDecoder
from espnet_mamba.modules.attention import MultiHeadAttention
from espnet_mamba.modules.block import Residual
from espnet_mamba.modules.execution import Execution
from espnet_mamba.modules.factory import build_mixer, named_options, resolve_mixer_conf
from espnet_mamba.modules.norm import RMSNorm
from espnet_mamba.modules.padding import lengths_to_mask


class SpeechMambaDecoderLayer(nn.Module):
    def __init__(self, d_model, heads, dropout_rate, attention_dropout_rate, make_mixer,
                 execution):
        super().__init__()
        self.mamba_in = Residual(d_model, make_mixer(), dropout_rate, execution=execution)
        self.src_attn = Residual(d_model, MultiHeadAttention(d_model, heads,
                                                             attention_dropout_rate),
                                 dropout_rate, execution=execution)
        self.mamba_out = Residual(d_model, make_mixer(), dropout_rate, execution=execution)

    def forward(self, x, lengths, memory, memory_mask):
        x = self.mamba_in(x, lengths)
        x = self.src_attn(x, memory, key_mask=memory_mask)
        return self.mamba_out(x, lengths)

    def step(self, x, state, keys, values, key_mask):
        x, s_in = self.mamba_in.step(x, state[0])
        attn = self.src_attn
        x = x + attn.dropout(attn.layer.attend(attn.norm(x)[:, None], keys, values,
                                               key_mask)[:, 0])
        x, s_out = self.mamba_out.step(x, state[1])
        return x, (s_in, s_out)


@named_options("decoder_conf")
class SpeechMambaDecoder(RecurrentDecoder):
    @typechecked
    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        attention_heads: int = 4,
        num_blocks: int = 6,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        mixer: str = "mamba",
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        mixer_conf: Optional[dict] = None,
        # execution options (modules/execution.py): how this machine runs the weights
        backend: Optional[str] = None,
        fused_kernels: bool = True,
        cuda_graphs: bool = True,
    ):
        super().__init__()
        execution = self.execution = Execution(backend=(backend or "auto").lower(),
                                               fused_kernels=fused_kernels,
                                               cuda_graphs=cuda_graphs)
        d = encoder_output_size
        conf = resolve_mixer_conf(mixer, d_state, d_conv, expand, mixer_conf)

        def make_mixer():
            return build_mixer(d, mixer, False, execution=execution, **conf)

        self.embed = nn.Embedding(vocab_size, d)
        self.decoders = nn.ModuleList(
            SpeechMambaDecoderLayer(d, attention_heads, dropout_rate, attention_dropout_rate,
                                    make_mixer, execution)
            for _ in range(num_blocks))
        self.after_norm = RMSNorm(d, execution=execution)
        self.output_layer = nn.Linear(d, vocab_size)

    def forward(self, hs_pad: torch.Tensor, hlens: torch.Tensor, ys_in_pad: torch.Tensor,
                ys_in_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        memory_mask = lengths_to_mask(hlens, hs_pad.shape[1])
        x = self.embed(ys_in_pad)
        for layer in self.decoders:
            x = layer(x, ys_in_lens, hs_pad, memory_mask)
        return self.output_layer(self.after_norm(x)), ys_in_lens

    def start_state(self, memory, lengths):
        batch = memory.shape[0]
        keys_values = [layer.src_attn.layer.project_memory(memory) for layer in self.decoders]
        recurrent = tuple(
            (layer.mamba_in.layer.init_state(batch, memory.device, memory.dtype),
             layer.mamba_out.layer.init_state(batch, memory.device, memory.dtype))
            for layer in self.decoders)
        return recurrent, SpeechMemory(keys_values, lengths_to_mask(lengths, memory.shape[1]))

    def step(self, tokens, recurrent, memory):
        x = self.embed(tokens)
        new = []
        for layer, state, (keys, values) in zip(self.decoders, recurrent, memory.keys_values):
            x, state = layer.step(x, state, keys, values, memory.key_mask)
            new.append(state)
        return self.output_layer(self.after_norm(x)), tuple(new)
