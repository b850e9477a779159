"""The value rules of the options every encoder here has beside modules/factory.py's
COMMON_RULES: its input layer, intermediate CTC and CUDA-graph options
(``named_options("encoder_conf", ENCODER_RULES)``; modules/option_rules.py checks them)."""

from __future__ import annotations

from espnet_mamba.encoders.input_layer import INPUT_LAYERS
from espnet_mamba.graphs.training import OPTIONS as GRAPH_OPTIONS
from espnet_mamba.modules import option_rules as rules


def _interctc_rule(value, conf):
    """Layers whose output feeds an intermediate CTC: 1..num_blocks - 1."""
    blocks = conf.get("num_blocks")
    if not isinstance(value, list) or not all(rules.integer(1)(i, conf) is None for i in value):
        return "must be a list of integers >= 1"
    if blocks == 1 and value:
        return "must be empty with num_blocks = 1 (the last layer's output is the encoder's)"
    if blocks is not None and any(i >= blocks for i in value):
        return f"each must be in 1..{blocks - 1} (num_blocks - 1; the last layer's output is " \
               "the encoder's)"
    return None


ENCODER_RULES = {
    "input_layer": rules.choice(INPUT_LAYERS),
    "interctc_layer_idx": _interctc_rule,
    "cuda_graph_conf": rules.nested(lambda conf: {k: rules.integer(1) for k in GRAPH_OPTIONS}),
}
