"""Samba-ASR encoder: conv subsampling -> residual Mamba blocks (RMSNorm, pre-norm) -> RMSNorm.

Bidirectional by default (each block has a forward and a backward mixer, each utterance reversed
within its own length); ``bidirectional: false`` gives a causal encoder for streaming use.
"""

from __future__ import annotations

from typing import List, Optional

from typeguard import typechecked

from espnet_mamba.encoders.options import ENCODER_RULES
from espnet_mamba.encoders.stack import StackEncoder
from espnet_mamba.modules.block import Residual
from espnet_mamba.modules.execution import Execution
from espnet_mamba.modules.factory import build_mixer, named_options, resolve_mixer_conf


class _MambaLayer(Residual):
    def forward(self, x, lengths, valid, packing=None):
        return super().forward(x, lengths, packing=packing)


@named_options("encoder_conf", ENCODER_RULES)
class SambaASREncoder(StackEncoder):
    @typechecked
    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        num_blocks: int = 12,
        dropout_rate: float = 0.1,
        input_layer: Optional[str] = "conv2d",
        mixer: str = "mamba",
        bidirectional: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        mixer_conf: Optional[dict] = None,
        interctc_layer_idx: List[int] = [],
        interctc_use_conditioning: bool = False,
        recompute_input_layer: bool = False,
        # execution options (modules/execution.py): how this machine runs the weights
        backend: Optional[str] = None,
        fused_kernels: bool = True,
        merge_directions: str = "auto",
        pack_sequences: bool = False,
        packed_mixer: str = "fused",
        cuda_graphs: bool = False,
        cuda_graph_conf: Optional[dict] = None,
    ):
        execution = Execution(backend=(backend or "auto").lower(), fused_kernels=fused_kernels,
                              merge_directions=merge_directions, packed_mixer=packed_mixer,
                              cuda_graphs=cuda_graphs, pack_sequences=pack_sequences)
        conf = resolve_mixer_conf(mixer, d_state, d_conv, expand, mixer_conf)
        layers = [
            _MambaLayer(output_size, build_mixer(output_size, mixer, bidirectional,
                                                 execution=execution, **conf),
                        dropout_rate, execution=execution)
            for _ in range(num_blocks)
        ]
        super().__init__(input_size, output_size, input_layer, dropout_rate, layers,
                         interctc_layer_idx, interctc_use_conditioning, execution,
                         cuda_graph_conf, recompute_input_layer)
