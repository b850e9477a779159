"""ESPnet's default front-end (STFT with center padding, log-mel) and global_mvn, fed waveform
chunks, give the whole waveform's features frame for frame; through a causal Samba-ASR
encoder, the streamed output equals ESPnetASRModel.encode on the whole waveform.
utterance_mvn and too-short audio are refused by name."""

import numpy as np
import pytest
import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.espnet_model import ESPnetASRModel
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.layers.global_mvn import GlobalMVN
from espnet2.layers.utterance_mvn import UtteranceMVN
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from espnet_mamba.encoders.samba_asr import SambaASREncoder
from espnet_mamba.encoders.streaming import StreamingEncoder
from espnet_mamba.integration.streaming_inference import StreamingFrontend

TOKENS = ["<blank>", "<unk>", "a", "b", "<sos/eos>"]
N_MELS = 40


def stats_file(tmp_path, rng):
    feats = rng.standard_normal((500, N_MELS)) * 2 - 7
    path = tmp_path / "feats_stats.npz"
    np.savez(path, count=np.array(len(feats)), sum=feats.sum(0),
             sum_square=(feats ** 2).sum(0))
    return path


def model(tmp_path, normalize="global", center=True, mixer="mamba", n_fft=512, hop=160,
          win_length=None):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frontend = DefaultFrontend(n_fft=n_fft, hop_length=hop, win_length=win_length,
                               n_mels=N_MELS, center=center)
    norm = {"global": lambda: GlobalMVN(stats_file(tmp_path, rng)),
            "utterance": UtteranceMVN, None: lambda: None}[normalize]()
    encoder = SambaASREncoder(N_MELS, output_size=32, num_blocks=2, d_state=8,
                              bidirectional=False, mixer=mixer,
                              mixer_conf={"headdim": 16} if mixer == "mamba2" else None)
    return ESPnetASRModel(len(TOKENS), TOKENS, frontend, None, norm, None, encoder, None, None,
                          CTC(len(TOKENS), 32), None, ctc_weight=1.0).eval()


def wave(samples=16000 + 123, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 440 * t)
            + 0.05 * torch.randn(samples, generator=g)).float()


def whole_features(m, wav):
    with torch.no_grad():
        feats, lens = m._extract_feats(wav[None], torch.tensor([len(wav)]))
        if m.normalize is not None:
            feats, lens = m.normalize(feats, lens)
    return feats[0]


def chunks_of(wav, sizes):
    out, start, k = [], 0, 0
    while start < len(wav):
        size = sizes[k % len(sizes)]
        out.append(wav[start:start + size])
        start += size
        k += 1
    return out


def run_stream(stage, chunks):
    return torch.cat([stage(c, is_final=i == len(chunks) - 1) for i, c in enumerate(chunks)])


def rel_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


SIZES = [[5120], [1], [4000, 17, 333, 9000, 2], [257], [10 ** 6]]


@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
def test_streamed_features_equal_whole_waveform(tmp_path, sizes):
    m = model(tmp_path)
    wav = wave()
    ref = whole_features(m, wav)
    if sizes == [1]:
        wav, ref = wav[:3000], whole_features(m, wav[:3000])  # one sample per call: shorter
    out = run_stream(StreamingFrontend(m), chunks_of(wav, sizes))
    assert out.shape == ref.shape
    assert rel_error(out, ref) < 1e-5


@pytest.mark.parametrize("center,n_fft,hop,win", [(False, 512, 160, None), (True, 400, 160, 320),
                                                  (True, 512, 256, None)])
def test_front_end_settings(tmp_path, center, n_fft, hop, win):
    m = model(tmp_path, center=center, n_fft=n_fft, hop=hop, win_length=win)
    wav = wave(9001)
    ref = whole_features(m, wav)
    out = run_stream(StreamingFrontend(m), chunks_of(wav, [700, 5120, 3]))
    assert out.shape == ref.shape and rel_error(out, ref) < 1e-5


def test_frames_are_emitted_as_soon_as_their_window_has_arrived(tmp_path):
    fe = StreamingFrontend(model(tmp_path))  # n_fft 512, hop 160, pad 256
    assert len(fe(torch.zeros(256))) == 0  # the start's reflection needs sample 256
    assert len(fe(torch.zeros(1))) == 1  # frame 0: padded samples 0..511
    assert len(fe(torch.zeros(159))) == 1  # frame 1 ends at padded sample 671
    assert len(fe(torch.zeros(0), is_final=True)) == 416 // 160 + 1 - 2  # the end's frames
    sizes = []
    for _ in range(50):
        fe(torch.zeros(999))
        sizes.append(fe.state_numel())
    assert max(sizes) < 512 + 257


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_waveform_chunks_to_encoder_output_equal_encode(tmp_path, mixer):
    m = model(tmp_path, mixer=mixer)
    wav = wave(16000 * 2 + 77)
    with torch.no_grad():
        ref, lens = m.encode(wav[None], torch.tensor([len(wav)]))
    frontend, encoder = StreamingFrontend(m), StreamingEncoder(m.encoder)
    chunks = chunks_of(wav, [5120, 811, 2048])
    out = torch.cat([encoder(frontend(c, is_final=(last := i == len(chunks) - 1)), last)
                     for i, c in enumerate(chunks)])
    assert out.shape == ref[0].shape == (lens.item(), 32)
    assert rel_error(out, ref[0]) < 1e-5


def test_utterance_mvn_is_refused(tmp_path):
    with pytest.raises(ValueError, match="normalize: utterance_mvn"):
        StreamingFrontend(model(tmp_path, normalize="utterance"))


def test_no_normalize_is_accepted(tmp_path):
    m = model(tmp_path, normalize=None)
    wav = wave(4000)
    out = run_stream(StreamingFrontend(m), chunks_of(wav, [1000]))
    assert rel_error(out, whole_features(m, wav)) < 1e-5


def test_too_short_audio_is_named(tmp_path):
    fe = StreamingFrontend(model(tmp_path))
    fe(torch.zeros(100))
    with pytest.raises(TooShortUttError, match="needs at least 257"):
        fe(torch.zeros(100), is_final=True)
    assert fe.state_numel() == 0  # and the next utterance starts afresh
    assert len(fe(torch.zeros(1000), is_final=True)) == 1000 // 160 + 1


def test_multichannel_chunk_is_refused(tmp_path):
    with pytest.raises(ValueError, match="1-D"):
        StreamingFrontend(model(tmp_path))(torch.zeros(100, 2))
