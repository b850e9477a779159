"""Padding never changes an encoder's output: each utterance alone equals its rows in a padded
batch, for both encoders, both mixers, both directions and every input layer (fp64)."""

import pytest

from model_checks import ENCODERS, MIXER_CONF, encoder_padding_error

PAIRS = [(name, mixer) for name in ("samba_asr", "speech_mamba") for mixer in MIXER_CONF]


@pytest.mark.parametrize("name,mixer", PAIRS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_encoder_padding_invariance(name, mixer, bidirectional):
    enc = ENCODERS[name](20, output_size=32, num_blocks=2, mixer=mixer, d_state=8,
                         bidirectional=bidirectional, mixer_conf=MIXER_CONF[mixer])
    assert encoder_padding_error(enc.double().eval()) < 1e-5


@pytest.mark.parametrize("input_layer", ["conv2d", "conv2d6", "conv2d8", "linear", None])
def test_encoder_input_layers(input_layer):
    enc = ENCODERS["samba_asr"](32, output_size=32, num_blocks=1, input_layer=input_layer)
    assert encoder_padding_error(enc.double().eval(), idim=32) < 1e-5
