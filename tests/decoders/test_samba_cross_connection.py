"""samba_asr's ``cross_connection`` option: its values are checked by name, the default is
``attention`` without the speech summary, ``prefix`` keeps the parameters of the models trained
before the option existed, and the
attention readings reach every speech frame from every token.  Decoding, padding and ESPnet's
beam searches run for every reading in tests/decoders/test_recurrent_decoding.py."""

import pytest
import torch

from espnet_mamba.decoders.samba_asr import SambaASRDecoder
from espnet_mamba.modules.option_rules import BadOptionError
from model_checks import VOCAB, tiny_decoder


@pytest.mark.parametrize("kw, message", [
    ({"cross_connection": "cross"},
     "decoder_conf.cross_connection = 'cross': must be one of 'prefix', 'attention', "
     "'prefix_attention'"),
    ({"cross_connection": "prefix", "cross_attention_heads": 4},
     "decoder_conf.cross_attention_heads = 4: only used with cross_connection 'attention' or "
     "'prefix_attention' (it is 'prefix'); delete it or set it to null"),
    ({"cross_connection": "attention", "cross_attention_heads": 0},
     "decoder_conf.cross_attention_heads = 0: must be an integer >= 1"),
    ({"cross_connection": "prefix_attention", "cross_attention_heads": 3},
     "decoder_conf.cross_attention_heads = 3: must divide encoder_output_size = 32"),
    ({"cross_connection": "attention", "cross_attention_heads": "four"},
     "decoder_conf.cross_attention_heads = 'four': must be an integer >= 1"),
])
def test_bad_value_is_named(kw, message):
    with pytest.raises(BadOptionError) as info:
        SambaASRDecoder(VOCAB, 32, num_blocks=1, **kw)
    assert str(info.value) == message


# the parameters of a samba_asr decoder as trained before cross_connection existed (packed
# models hold these names: tests/integration/test_packed_model_compat.py loads one strictly)
PREFIX_MODULES = {"embed", "speech_proj", "speech_summary", "decoders", "after_norm",
                  "output_layer"}


def test_attention_without_speech_summary_is_the_default():
    default = tiny_decoder("samba_asr", "mamba")
    assert default.cross_connection == "attention" and default.speech_summary is None
    assert len(default.cross_attention) == len(default.decoders)
    names = {k.split(".")[0] for k in default.state_dict()}
    assert names == PREFIX_MODULES - {"speech_summary"} | {"cross_attention"}


def test_prefix_keeps_the_parameters_of_the_models_trained_before_the_option():
    prefix = tiny_decoder("samba_asr", "mamba", cross_connection="prefix", speech_summary=True)
    assert prefix.cross_attention is None
    assert {k.split(".")[0] for k in prefix.state_dict()} == PREFIX_MODULES


@pytest.mark.parametrize("how", ["attention", "prefix_attention"])
def test_attention_adds_one_cross_attention_per_block(how):
    dec = tiny_decoder("samba_asr", "mamba", cross_connection=how, cross_attention_heads=2,
                       speech_summary=True)
    assert len(dec.cross_attention) == len(dec.decoders) == 2
    assert dec.cross_attention[0].layer.heads == 2
    names = {k.split(".")[0] for k in dec.state_dict()}
    assert names == PREFIX_MODULES | {"cross_attention"}


def _token_grad_per_frame(dec, frames=40, token=5):
    """|d logit(token t) / d speech frame| for every frame of one utterance."""
    hs = torch.randn(1, frames, 32, dtype=torch.float64, requires_grad=True)
    ys = torch.randint(0, VOCAB - 1, (1, token + 1))
    logits, _ = dec(hs, torch.tensor([frames]), ys, torch.tensor([token + 1]))
    logits[0, token].sum().backward()
    return hs.grad[0].abs().sum(-1)


@pytest.mark.parametrize("how", ["attention", "prefix_attention"])
def test_attention_reads_every_frame_from_every_token(how):
    """The cross-attention gives each token a path to every frame that does not pass through
    a scan's state: with the mixers' state decay made total (A -> -inf: each layer's scan
    forgets everything before the current position), the prefix reading no longer reaches the
    speech, and the attention readings still reach every frame."""
    grads = {}
    for reading in ("prefix", how):
        dec = tiny_decoder("samba_asr", "mamba", cross_connection=reading,
                           speech_summary=False)
        with torch.no_grad():
            for layer in dec.decoders:
                layer.layer.A_log.fill_(30.0)  # exp(dt * -e^30) = 0: nothing carried over
                layer.layer.conv1d.weight.zero_()  # nor through the convolution's window
        grads[reading] = _token_grad_per_frame(dec)
    assert grads["prefix"].max() < 1e-12
    assert (grads[how] > 1e-8).all()
