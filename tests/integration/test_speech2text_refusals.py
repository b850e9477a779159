"""What ESPnet's Speech2Text refuses with the plugin's models, each with a message that names the
problem: audio too short for the subsampling or for the STFT (ESPnet's TooShortUttError, which
asr_inference skips per utterance), NaN/inf samples (the same error, so skipped too), a
channel-first multi-channel array, a checkpoint with the same keys and other shapes
(docs/reliability.md, "Bad input")."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import long_recording_cpu as bench  # noqa: E402


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """config.yaml + model.pth of an untrained tiny samba_asr model built by ESPnet's ASRTask
    (default fbank front-end, 80 mels, hop 160, conv2d)."""
    config, model, _ = bench.build_model_files(
        tmp_path_factory.mktemp("s2t"), encoder_conf=bench.TINY_CONF,
        decoder_conf=bench.TINY_DECODER_CONF)
    return config, model


def speech2text(model_files, model_file=None):
    from espnet2.bin.asr_inference import Speech2Text

    config, model = model_files
    return Speech2Text(asr_train_config=config, asr_model_file=model_file or model,
                       device="cpu", beam_size=2, ctc_weight=0.3, maxlenratio=0.02, nbest=1)


def test_speech2text_short_and_non_finite_audio(model_files):
    """Through ESPnet's Speech2Text: too short for conv2d and NaN/inf samples, both ESPnet's
    TooShortUttError, which asr_inference turns into an empty hypothesis per utterance."""
    s2t = speech2text(model_files)
    with pytest.raises(TooShortUttError, match="too short for subsampling.*conv2d needs"):
        s2t(np.random.randn(500).astype(np.float32))  # 31 ms: 4 frames
    for bad in (np.nan, np.inf):
        speech = np.random.randn(16000).astype(np.float32)
        speech[123] = bad
        with pytest.raises(TooShortUttError, match=r"non-finite values \(NaN/inf\) in the input"):
            s2t(speech)
    assert s2t(np.random.randn(16000).astype(np.float32))[0][2]  # a 1 s input decodes


@pytest.mark.parametrize("samples", [0, 100, 256])
def test_speech2text_empty_audio_has_a_clear_message(model_files, samples):
    """ESPnet's STFT front-end fails on < n_fft/2 + 1 samples with a tensor-shape message; the
    hook's check (integration/stft.py) makes it ESPnet's TooShortUttError, naming the sizes, which
    asr_inference skips per utterance."""
    with pytest.raises(TooShortUttError, match=f"has {samples} audio samples.*at least 257"):
        speech2text(model_files)(np.zeros(samples, dtype=np.float32))
    # 257 samples pass the STFT (2 frames) and reach the encoder's own subsampling check
    with pytest.raises(TooShortUttError, match="2 frames and is too short for subsampling"):
        speech2text(model_files)(np.zeros(257, dtype=np.float32))


def test_model_forward_passes_non_finite_rows_and_names_them(model_files, caplog):
    """ESPnet's model forward (training and validation; the trainer hands it ``utt_id``): a NaN
    utterance is passed on in eval mode too, its id logged (integration/nonfinite_batches.py),
    and the loss is not finite, which ESPnet's trainer skips; encode() alone (decoding) refuses
    it with the skippable TooShortUttError."""
    import logging

    import torch

    model = speech2text(model_files).asr_model.eval()
    speech = torch.randn(2, 16000)
    speech[1, 99] = float("nan")
    lengths = torch.tensor([16000, 16000])
    text = torch.tensor([[3, 4], [4, 3]])
    with caplog.at_level(logging.WARNING), torch.no_grad():
        loss = model(speech, lengths, text, torch.tensor([2, 2]), utt_id=["good", "bad"])[0]
    assert not torch.isfinite(loss)
    assert "input of utterance(s) ['bad']" in caplog.text, caplog.text
    with pytest.raises(TooShortUttError, match=r"non-finite.*batch row\(s\) \[1\] of 2"):
        model.encode(speech, lengths)


def test_channel_first_stereo_is_named(model_files):
    """A (channels, samples) array: ESPnet's STFT reads (samples, channels), so the 2 channels
    would pass for 2 samples; the message says the array looks channel-first."""
    stereo = np.random.randn(2, 16000).astype(np.float32)
    with pytest.raises(ValueError, match=r"shape \(2, 16000\) looks channel-first \(channels, "
                                         r"samples\).*\(samples,\) or \(samples, channels\)"):
        speech2text(model_files)(stereo)


def test_checkpoint_of_another_size_is_refused_through_speech2text(model_files, tmp_path):
    """Same keys, other shapes (a checkpoint of d_state 16 under a config of d_state 8):
    refused by torch with the parameter named, although ESPnet loads with strict=False.
    (Missing / unexpected keys through Speech2Text: tests/integration/test_model_zoo_packing.py.)"""
    other = bench.build_model_files(tmp_path, encoder_conf=dict(bench.TINY_CONF, d_state=16),
                                    decoder_conf=bench.TINY_DECODER_CONF)[1]
    with pytest.raises(RuntimeError, match=r"size mismatch for encoder\..*A_log"):
        speech2text(model_files, model_file=other)
