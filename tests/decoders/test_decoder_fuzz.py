"""Random decoder configurations and inputs (hypothesis, 30 fixed examples): the forward pass and
two ``batch_score`` steps with 0-24 encoder frames (an utterance that the encoder's subsampling
left without frames inside a batch), float32/float64.  Every case either runs with finite
outputs or raises an error that says why."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz_cases import DTYPES, FUZZ, fuzz_mixer_conf
from model_checks import DECODERS, MIXER_CONF

@st.composite
def decoder_cases(draw):
    name = draw(st.sampled_from(sorted(DECODERS)))
    mixer = draw(st.sampled_from(sorted(MIXER_CONF)))
    d = draw(st.sampled_from([8, 12, 16, 24]))
    conf = dict(num_blocks=draw(st.integers(1, 2)), mixer=mixer, d_state=draw(st.integers(1, 8)),
                d_conv=draw(st.integers(2, 4)), expand=draw(st.sampled_from([1, 1.5, 2])),
                dropout_rate=0.0, mixer_conf=fuzz_mixer_conf(draw, mixer))
    if name == "speech_mamba":
        conf["attention_heads"] = draw(st.sampled_from([1, 2, 3, 4]))
    else:
        conf["speech_summary"] = draw(st.booleans())
        conf["cross_connection"] = draw(st.sampled_from(["prefix", "attention",
                                                         "prefix_attention"]))
        if conf["cross_connection"] != "prefix":
            conf["cross_attention_heads"] = draw(st.sampled_from([None, 1, 2, 3, 4]))
    vocab = draw(st.integers(2, 20))
    batch = draw(st.integers(1, 3))
    frames, tokens = draw(st.integers(1, 24)), draw(st.integers(1, 8))
    # an encoder gives 0 frames to an utterance too short for its subsampling inside a batch
    hlens = [frames] + [draw(st.integers(0, frames)) for _ in range(batch - 1)]
    ylens = [tokens] + [draw(st.integers(1, tokens)) for _ in range(batch - 1)]
    return name, conf, d, vocab, hlens, ylens, draw(DTYPES)


@FUZZ
@given(decoder_cases())
def test_fuzz_decoders(case):
    name, conf, d, vocab, hlens, ylens, dtype = case
    try:
        dec = DECODERS[name](vocab, d, **conf)
    except ValueError as exc:
        assert str(exc)
        return
    dec = dec.to(dtype).eval()
    hs = torch.randn(len(hlens), hlens[0], d, dtype=dtype)
    ys = torch.randint(0, vocab, (len(ylens), ylens[0]))
    with torch.no_grad():
        logits, olens = dec(hs, torch.tensor(hlens), ys, torch.tensor(ylens))
        assert logits.shape == (len(ylens), ylens[0], vocab) and logits.dtype == dtype
        assert torch.isfinite(logits).all(), "silent NaN/inf"
        assert olens.tolist() == ylens
        # beam-search steps of the first utterance, two hypotheses
        x = hs[0]
        states = [dec.batch_init_state(x)] * 2
        prefix = torch.tensor([[vocab - 1]] * 2)
        for _ in range(2):
            logp, states = dec.batch_score(prefix, states, x.expand(2, -1, -1))
            assert logp.shape == (2, vocab) and torch.isfinite(logp).all()
            prefix = torch.cat([prefix, logp.argmax(-1, keepdim=True)], dim=1)
