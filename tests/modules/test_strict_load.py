"""Per-module strict loading (modules/strict_load.py): a checkpoint whose keys do not match an
encoder or decoder of the plugin is refused with the keys named, even by a
``load_state_dict(strict=False)`` of the model that contains it (as ESPnet loads)."""

import pytest
import torch

from model_checks import ENCODERS, tiny_decoder


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_checkpoint_mismatch_is_refused_with_key_names(part):
    from espnet_mamba.modules.strict_load import CheckpointMismatchError
    enc = ENCODERS["samba_asr"](20, output_size=32, num_blocks=2)
    dec = tiny_decoder("samba_asr", "mamba", dtype=torch.float32)
    model = torch.nn.ModuleDict({"encoder": enc, "decoder": dec})
    state = model.state_dict()
    model.load_state_dict(state, strict=False)  # a matching checkpoint loads
    key = next(k for k in state if k.startswith(part + ".") and "A_log" in k)
    bad = dict(state)
    bad[key.replace("A_log", "A_logg")] = bad.pop(key)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[.*A_log'\].*A_logg"):
        model.load_state_dict(bad, strict=False)
