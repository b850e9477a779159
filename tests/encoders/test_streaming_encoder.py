"""A causal Samba-ASR encoder fed chunk by chunk gives the full-utterance forward's output
frames (fp32, CPU), for any chunking, both mixers and the streamable input layers; its state
between chunks does not grow with the number of chunks; a bidirectional encoder is refused."""

import pytest
import torch
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from model_checks import MIXER_CONF

from espnet_mamba.encoders.samba_asr import SambaASREncoder
from espnet_mamba.encoders.speech_mamba import SpeechMambaEncoder
from espnet_mamba.encoders.streaming import StreamingEncoder, input_window

IDIM = 20


def causal(mixer="mamba", input_layer="conv2d", num_blocks=2, **kw):
    torch.manual_seed(0)
    return SambaASREncoder(IDIM, output_size=32, num_blocks=num_blocks, mixer=mixer, d_state=8,
                           bidirectional=False, mixer_conf=MIXER_CONF[mixer],
                           input_layer=input_layer, **kw).eval()


def full(enc, feats):
    with torch.no_grad():
        out, lengths, _ = enc(feats[None], torch.tensor([len(feats)]))
    assert lengths.tolist() == [out.shape[1]]
    return out[0]


def streamed(streamer, feats, sizes):
    outs, start, k = [], 0, 0
    while start < len(feats):
        size = sizes[k % len(sizes)]
        chunk = feats[start:start + size]
        start += size
        k += 1
        outs.append(streamer(chunk, is_final=start >= len(feats)))
    return torch.cat(outs)


def rel_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


CHUNKINGS = [[1], [7], [16], [40], [3, 11, 1, 25, 8], [200]]


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
@pytest.mark.parametrize("sizes", CHUNKINGS, ids=lambda s: "-".join(map(str, s)))
def test_streaming_equals_full_forward(mixer, sizes):
    enc = causal(mixer)
    feats = torch.randn(123, IDIM)
    ref = full(enc, feats)
    for frame_by_frame in (False, True):
        out = streamed(StreamingEncoder(enc, frame_by_frame=frame_by_frame), feats, sizes)
        assert out.shape == ref.shape
        assert rel_error(out, ref) < 1e-5, frame_by_frame


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_mixer_chunk_from_a_state_equals_steps(mixer):
    """step_chunk from any state: the outputs and the state of step frame by frame (fp64),
    here from the state a first chunk left."""
    layer = causal(mixer).encoders[0].layer.double()
    x = torch.randn(2, 30, 32, dtype=torch.float64)
    want = layer.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(30):
        y, want = layer.step(x[:, t], want)
        steps.append(y)
    first, state = layer.step_chunk(x[:, :11], layer.init_state(2, dtype=torch.float64))
    assert state[1].abs().max() > 0  # the second chunk starts from a state
    second, state = layer.step_chunk(x[:, 11:], state)
    assert rel_error(torch.cat([first, second], 1), torch.stack(steps, 1)) < 1e-10
    for got, ref in zip(state, want, strict=True):
        assert rel_error(got, ref) < 1e-10


@pytest.mark.parametrize("input_layer", ["conv2d6", "conv2d8", "conv2d2", "conv1d2", "linear",
                                         None])
def test_streaming_input_layers(input_layer):
    kw = {"input_size": 32} if input_layer is None else {}
    enc = SambaASREncoder(kw.get("input_size", IDIM), output_size=32, num_blocks=1,
                          bidirectional=False, input_layer=input_layer, d_state=8).eval()
    idim = enc.embed.input_size
    feats = torch.randn(101, idim)
    ref = full(enc, feats)
    for sizes in ([1], [9], [5, 17, 2]):
        out = streamed(StreamingEncoder(enc), feats, sizes)
        assert out.shape == ref.shape, (input_layer, sizes)
        assert rel_error(out, ref) < 1e-5, (input_layer, sizes)


def test_input_windows():
    assert input_window(causal(input_layer="conv2d")) == (4, 7)
    assert input_window(causal(input_layer="conv2d6")) == (6, 11)
    assert input_window(causal(input_layer="conv2d8")) == (8, 15)


def test_output_frames_are_emitted_as_soon_as_final():
    enc = causal()
    streamer = StreamingEncoder(enc)
    assert streamer(torch.randn(6, IDIM)).shape[0] == 0  # conv2d needs 7 frames
    assert streamer(torch.randn(1, IDIM)).shape[0] == 1
    assert streamer(torch.randn(3, IDIM)).shape[0] == 0
    assert streamer(torch.randn(1, IDIM)).shape[0] == 1  # frames 4..10
    assert streamer(torch.randn(0, IDIM), is_final=True).shape[0] == 0


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_state_does_not_grow_with_chunks(mixer):
    streamer = StreamingEncoder(causal(mixer))
    sizes = []
    for _ in range(60):
        streamer(torch.randn(5, IDIM))
        sizes.append(streamer.state_numel())
    assert max(sizes[10:]) == max(sizes[:10])  # bounded by the first chunks' size
    pending_frames = streamer.pending.shape[1]
    assert pending_frames < streamer.field


def test_new_utterance_after_final():
    enc = causal()
    streamer = StreamingEncoder(enc)
    a, b = torch.randn(50, IDIM), torch.randn(41, IDIM)
    streamed(streamer, a, [13])
    out = streamed(streamer, b, [13])
    assert rel_error(out, full(enc, b)) < 1e-5


def test_too_short_utterance_is_named_as_in_the_full_forward():
    streamer = StreamingEncoder(causal())
    streamer(torch.randn(4, IDIM))
    with pytest.raises(TooShortUttError, match="needs at least 7 frames"):
        streamer(torch.randn(2, IDIM), is_final=True)
    assert streamer.state_numel() == 0


def test_bidirectional_encoder_is_refused():
    enc = SambaASREncoder(IDIM, output_size=32, num_blocks=1, d_state=8).eval()
    with pytest.raises(ValueError, match=r"bidirectional: true.*bidirectional: false"):
        StreamingEncoder(enc)


def test_attention_encoder_is_refused():
    enc = SpeechMambaEncoder(IDIM, output_size=32, num_blocks=1, d_state=8,
                             attention_heads=2, bidirectional=False).eval()
    with pytest.raises(ValueError, match="streaming"):
        StreamingEncoder(enc)


def test_wrong_feature_size_and_training_mode_are_refused():
    enc = causal()
    with pytest.raises(ValueError, match=f"input_size={IDIM}"):
        StreamingEncoder(enc)(torch.randn(5, IDIM + 1))
    enc.train()
    with pytest.raises(RuntimeError, match="eval"):
        StreamingEncoder(enc)(torch.randn(5, IDIM))


def test_non_finite_input_is_skippable_as_in_decoding():
    streamer = StreamingEncoder(causal())
    streamer(torch.randn(9, IDIM))
    bad = torch.randn(5, IDIM)
    bad[2, 3] = float("nan")
    with pytest.raises(TooShortUttError, match=r"non-finite values .*frames 9..13"):
        streamer(bad)
    assert streamer.state_numel() == 0  # the next utterance starts afresh
