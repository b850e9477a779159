"""Random encoder configurations and inputs (hypothesis, 30 fixed examples): sizes, mixers, input
layers, directions, lengths 0-48 (empty utterances included), float32/float64.  Every case
either runs with finite outputs or raises an error that says why."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from espnet_mamba.encoders.input_layer import CONV_LAYERS
from fuzz_cases import DTYPES, FUZZ, fuzz_mixer_conf
from model_checks import ENCODERS, MIXER_CONF

@st.composite
def encoder_cases(draw):
    name = draw(st.sampled_from(sorted(ENCODERS)))
    mixer = draw(st.sampled_from(sorted(MIXER_CONF)))
    d = draw(st.sampled_from([8, 12, 16, 24]))
    input_layer = draw(st.sampled_from([*CONV_LAYERS, "linear", None]))
    conf = dict(output_size=d, num_blocks=draw(st.integers(1, 2)), mixer=mixer,
                bidirectional=draw(st.booleans()), d_state=draw(st.integers(1, 8)),
                d_conv=draw(st.integers(2, 4)), expand=draw(st.sampled_from([1, 1.5, 2])),
                input_layer=input_layer, dropout_rate=0.0, mixer_conf=fuzz_mixer_conf(draw, mixer))
    if name == "speech_mamba":
        conf["attention_heads"] = draw(st.sampled_from([1, 2, 3, 4]))
    idim = d if input_layer is None and draw(st.booleans()) else draw(st.integers(1, 24))
    batch = draw(st.integers(1, 3))
    frames = draw(st.integers(0, 48))
    lengths = [frames] + [draw(st.integers(0, frames)) for _ in range(batch - 1)]
    return name, conf, idim, lengths, draw(DTYPES)


@FUZZ
@given(encoder_cases())
def test_fuzz_encoders(case):
    name, conf, idim, lengths, dtype = case
    try:
        enc = ENCODERS[name](idim, **conf)
    except ValueError as exc:
        assert str(exc)  # a refused configuration says why
        return
    enc = enc.to(dtype).eval()
    frames = lengths[0]
    x = torch.randn(len(lengths), frames, idim, dtype=dtype)
    ilens = torch.tensor(lengths)
    short = frames < enc.embed.min_frames or 0 in lengths
    try:
        with torch.no_grad():
            y, olens, _ = enc(x, ilens)
    except TooShortUttError as exc:
        assert short, f"unexpected TooShortUttError: {exc}"
        assert "frames" in str(exc)
        return
    assert not short, "a too-short input was not refused"
    assert y.dtype == dtype and y.shape[0] == len(lengths) and y.shape[2] == conf["output_size"]
    assert torch.isfinite(y).all(), "silent NaN/inf"
    assert olens.shape == (len(lengths),) and 0 <= int(olens.min())
    assert int(olens.max()) <= y.shape[1]
