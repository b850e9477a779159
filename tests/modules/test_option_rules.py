"""The value rules of every option (modules/option_rules.py, the tables of modules/factory.py
and encoders/options.py): checked when an encoder/decoder is built, with a message naming
``<conf>.<key>``, the value and the valid range.  Through ESPnet's ASRTask (the prefixes a user
sees): tests/integration/test_config_value_errors.py."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch

from espnet_mamba.decoders.samba_asr import SambaASRDecoder
from espnet_mamba.decoders.speech_mamba import SpeechMambaDecoder
from espnet_mamba.encoders.samba_asr import SambaASREncoder
from espnet_mamba.encoders.speech_mamba import SpeechMambaEncoder
from espnet_mamba.modules import option_rules
from espnet_mamba.modules.factory import COMMON_RULES, MIXER_RULES, MIXERS, mixer_options
from espnet_mamba.modules.option_rules import BadOptionError
from espnet_mamba.ops import backend as ops_backend

TINY = {"output_size": 16, "num_blocks": 1, "d_state": 4}


def encoder(cls=SambaASREncoder, **kw):
    return cls(20, **{**TINY, **kw})


def decoder(cls=SambaASRDecoder, **kw):
    return cls(10, 16, **{"num_blocks": 1, "d_state": 4, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"num_blocks": 0}, "encoder_conf.num_blocks = 0: must be an integer >= 1"),
    ({"d_state": -4}, "encoder_conf.d_state = -4: must be an integer >= 1"),
    ({"output_size": 0}, "encoder_conf.output_size = 0: must be an integer >= 1"),
    ({"expand": 0}, "encoder_conf.expand = 0: must be a number > 0"),
    ({"d_conv": 0}, "encoder_conf.d_conv = 0: must be an integer >= 1"),
    ({"num_blocks": 2.5}, "encoder_conf.num_blocks = 2.5: must be an integer >= 1"),
    ({"num_blocks": True}, "encoder_conf.num_blocks = true: must be an integer >= 1"),
    ({"dropout_rate": 1.0}, "encoder_conf.dropout_rate = 1.0: must be a number in [0, 1)"),
    ({"input_layer": "conv3d"}, "encoder_conf.input_layer = 'conv3d': must be one of 'conv1d2'"),
    ({"mixer": "mamba3"}, "encoder_conf.mixer = 'mamba3': must be one of 'mamba', 'mamba2'"),
    ({"backend": "gpu"}, "encoder_conf.backend = 'gpu': must be one of 'auto', 'torch', 'cuda'"),
    ({"pack_sequences": "yes"}, "encoder_conf.pack_sequences = 'yes': must be true or false"),
    ({"mixer_conf": {"dt_min": 0}}, "encoder_conf.mixer_conf.dt_min = 0: must be a number > 0"),
    ({"mixer_conf": {"dt_min": 0.1, "dt_max": 0.01}},
     "encoder_conf.mixer_conf.dt_max = 0.01: must be >= dt_min = 0.1"),
    ({"mixer": "mamba2", "mixer_conf": {"headdim": 0}},
     "encoder_conf.mixer_conf.headdim = 0: must be an integer >= 1"),
    ({"mixer": "mamba2", "mixer_conf": {"A_init_range": [4, 1]}},
     "encoder_conf.mixer_conf.A_init_range = [4, 1]: must be a pair [low, high]"),
    ({"mixer_conf": {"headdim": 16}},  # a Mamba2 option under mixer: mamba
     "encoder_conf.mixer_conf.headdim: unknown option; valid: "),
    ({"cuda_graphs": True, "cuda_graph_conf": {"warmup": 0}},
     "encoder_conf.cuda_graph_conf.warmup = 0: must be an integer >= 1"),
    ({"mixer": "mamba2", "output_size": 48, "mixer_conf": {"headdim": 64}},
     "encoder_conf.mixer_conf.headdim = 64: must divide d_inner = expand * output_size = "
     "2 * 48 = 96"),
    ({"mixer": "mamba2", "mixer_conf": {"headdim": 8, "ngroups": 3}},
     "encoder_conf.mixer_conf.ngroups = 3: must divide the number of heads, d_inner / headdim "
     "= 32 / 8 = 4"),
    ({"backend": "cuda", "d_conv": 5},
     "encoder_conf.d_conv = 5: backend 'cuda' needs 2..4 (causal-conv1d's kernels)"),
    ({"interctc_layer_idx": [1]},
     "encoder_conf.interctc_layer_idx = [1]: must be empty with num_blocks = 1"),
    ({"num_blocks": 3, "interctc_layer_idx": [3]},
     r"encoder_conf.interctc_layer_idx = [3]: each must be in 1..2"),
])
@pytest.mark.parametrize("cls", [SambaASREncoder, SpeechMambaEncoder])
def test_bad_encoder_value_is_named_at_build(cls, kw, message):
    if cls is SpeechMambaEncoder:
        kw = {"attention_heads": 2, **kw}
    with pytest.raises(BadOptionError) as info:
        encoder(cls, **kw)
    assert str(info.value).startswith(message), str(info.value)


DECODER_CASES = [
    ({"num_blocks": 0}, "decoder_conf.num_blocks = 0: must be an integer >= 1"),
    ({"d_conv": 0}, "decoder_conf.d_conv = 0: must be an integer >= 1"),
    ({"expand": -1}, "decoder_conf.expand = -1: must be a number > 0"),
    ({"speech_summary": 1}, "decoder_conf.speech_summary = 1: must be of type bool"),
    ({"attention_heads": 0}, "decoder_conf.attention_heads = 0: must be an integer >= 1"),
    ({"attention_heads": 3}, "decoder_conf.attention_heads = 3: must divide "
                             "encoder_output_size = 16"),
    ({"mixer": "mamba2", "mixer_conf": {"headdim": 12}},
     "decoder_conf.mixer_conf.headdim = 12: must divide d_inner = expand * encoder_output_size "
     "= 2 * 16 = 32"),
    ({"mixer": "mamba2", "mixer_conf": {"headdim": -8}},
     "decoder_conf.mixer_conf.headdim = -8: must be an integer >= 1"),
]


@pytest.mark.parametrize("cls, kw, message", [
    (cls, kw, message) for cls in (SambaASRDecoder, SpeechMambaDecoder)
    for kw, message in DECODER_CASES
    if set(kw) <= set(inspect.signature(cls).parameters)])  # each class's own options
def test_bad_decoder_value_is_named_at_build(cls, kw, message):
    with pytest.raises(BadOptionError) as info:
        decoder(cls, **kw)
    assert str(info.value).startswith(message), str(info.value)


def test_bad_option_error_is_both_value_and_type_error():
    """Callers that caught the constructor's ValueError or typeguard's TypeError still do."""
    with pytest.raises(ValueError):
        encoder(num_blocks=0)
    with pytest.raises(TypeError):
        encoder(num_blocks="2")


def test_mixer_rules_name_every_mixer_conf_option():
    """The tables of modules/factory.py name exactly what mixer_conf can hold (every option of
    the mixer's constructor but d_state, d_conv, expand, set beside mixer_conf, and how it runs:
    backend, execution)."""
    for name, cls in MIXERS.items():
        assert set(MIXER_RULES[name]) == set(mixer_options(cls)) - {
            "d_state", "d_conv", "expand", "backend", "execution"}, name


def test_every_option_has_a_rule_or_a_type_check():
    """An option without a value rule is checked by its annotation: every parameter has one."""
    for cls in (SambaASREncoder, SpeechMambaEncoder, SambaASRDecoder, SpeechMambaDecoder):
        init = inspect.unwrap(cls.__init__)
        hints = option_rules.type_hints(init)
        for name in inspect.signature(init).parameters:
            if name != "self":
                assert name in COMMON_RULES or name in hints, (cls.__name__, name)


def test_defaults_and_valid_values_build():
    encoder(mixer="mamba2", mixer_conf={"headdim": 8, "chunk_size": 16}, backend="TORCH")
    # a width causal-conv1d's kernels do not take: the PyTorch path runs it (backend auto)
    enc = encoder(d_conv=6, mixer="mamba2", mixer_conf={"headdim": 8})
    assert enc(torch.randn(2, 30, 20), torch.tensor([30, 17]))[0].isfinite().all()
    encoder(num_blocks=3, interctc_layer_idx=[1, 2], expand=1.5, input_layer="linear")
    decoder(SpeechMambaDecoder, attention_heads=2, mixer_conf={"dt_rank": "auto"})


def test_bad_environment_backend_names_the_variable_at_build(monkeypatch):
    """The environment overrides the config (the machine decides how a model runs), so a bad
    value there fails whether or not the config sets a backend."""
    monkeypatch.setenv(ops_backend.ENV_VAR, "bogus")
    for conf in ({}, {"backend": "torch"}):
        with pytest.raises(BadOptionError, match=r"^ESPNET_MAMBA_BACKEND='bogus': unknown "
                                                 r"Mamba backend; valid: auto, torch, cuda"):
            encoder(**conf)


def test_cuda_backend_on_cpu_runs_the_pytorch_path_with_one_warning(caplog):
    ops_backend._warn_cpu_fallback.cache_clear()
    torch.manual_seed(0)
    cuda = encoder(backend="cuda").eval()
    reference = encoder(backend="torch").eval()
    reference.load_state_dict(cuda.state_dict())
    x, n = torch.randn(2, 40, 20), torch.tensor([40, 33])
    with caplog.at_level(logging.WARNING):
        got = cuda(x, n)[0]
        cuda(x, n)
    assert torch.equal(got, reference(x, n)[0])
    notices = [r.getMessage() for r in caplog.records if "backend='cuda'" in r.getMessage()]
    assert notices == ["backend='cuda' but the model runs on cpu: using the PyTorch path (the "
                       "CUDA kernels need CUDA tensors); set backend: auto to silence this"]


def test_recorded_plugin_version_is_accepted():
    """A config written by asr_train records espnet_mamba_version in encoder_conf/decoder_conf
    (integration/resolved_config.py): building from it directly gives the same model."""
    torch.manual_seed(0)
    plain = encoder()
    torch.manual_seed(0)
    recorded = encoder(espnet_mamba_version="0.1.0")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                 recorded.state_dict().values()))
    with pytest.raises(BadOptionError, match=r"^encoder_conf.espnet_mamba_version = \[1\]"):
        encoder(espnet_mamba_version=[1])
