"""Bad input to the encoders, each refused with an error that names the problem and where it
is: an empty or too-short utterance (ESPnet's TooShortUttError), malformed features or lengths;
NaN/inf features: passed on while training (ESPnet's trainer skips a non-finite step), ESPnet's
TooShortUttError when decoding (asr_inference skips the utterance) (docs/reliability.md,
"Bad input")."""

import logging

import pytest
import torch

from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from model_checks import ENCODERS, tiny_encoder


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_empty_utterance_is_too_short(name):
    enc = tiny_encoder(name)
    with pytest.raises(TooShortUttError, match=r"0 frames \(empty audio\) at batch index \[0\]"):
        enc(torch.randn(1, 0, 20), torch.tensor([0]))
    # one empty utterance in a padded batch: refused too, not a silent zero-length output
    with pytest.raises(TooShortUttError, match=r"empty audio\) at batch index \[1\]"):
        enc(torch.randn(3, 30, 20), torch.tensor([30, 0, 12]))


@pytest.mark.parametrize("xs,ilens,match", [
    (torch.randn(2, 30, 21), torch.tensor([30, 20]), r"21 features per frame.*input_size=20"),
    (torch.randn(30, 20), torch.tensor([30]), r"shape \(batch, frames, 20\), got \(30, 20\)"),
    (torch.randn(2, 30, 20), torch.tensor([30]), r"1-D tensor of 2 lengths"),
    (torch.randn(2, 30, 20), torch.tensor([31, 20]), r"lie in 0\.\.30.*\[31, 20\]"),
    (torch.randn(2, 30, 20), torch.tensor([30, -1]), r"lie in 0\.\.30"),
    (torch.randn(2, 30, 20), torch.tensor([30.0, 20.0]), r"lengths must be integers"),
    (torch.randint(0, 5, (2, 30, 20)), torch.tensor([30, 20]), r"floating point features"),
    (torch.randn(0, 30, 20), torch.tensor([], dtype=torch.long), r"empty batch"),
])
def test_malformed_encoder_input_is_named(xs, ilens, match):
    with pytest.raises(ValueError, match=match):
        tiny_encoder("samba_asr")(xs, ilens)


def test_too_short_audio_raises_espnet_error():
    from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
    enc = ENCODERS["samba_asr"](20, output_size=32, num_blocks=1, input_layer="conv2d8")
    with pytest.raises(TooShortUttError, match="conv2d8 needs at least 15 frames"):
        enc(torch.randn(1, 14, 20), torch.tensor([14]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_skippable_when_decoding(bad):
    """Eval mode (decoding): ESPnet's TooShortUttError, which asr_inference catches per
    utterance, naming the batch row."""
    enc = ENCODERS["samba_asr"](20, output_size=32, num_blocks=1).eval()
    x = torch.randn(3, 30, 20)
    x[1, 5, 3] = bad
    with pytest.raises(TooShortUttError, match=r"non-finite values \(NaN/inf\) in the input "
                                               r"\(batch row\(s\) \[1\] of 3\)"):
        enc(x, torch.tensor([30, 30, 20]))
    assert enc.nonfinite_rows == [1]
    y, _, _ = enc(x[[0, 2]], torch.tensor([30, 20]))  # the rest decodes
    assert torch.isfinite(y).all() and enc.nonfinite_rows == []


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_non_finite_features_pass_through_training(name, caplog):
    """Training: no error (ESPnet's trainer skips a step whose gradient norm is not finite);
    the bad row is logged and stays confined to its own output row."""
    enc = tiny_encoder(name, dropout_rate=0.0).train()
    x = torch.randn(3, 30, 20)
    x[2, 7, 0] = float("nan")
    with caplog.at_level(logging.WARNING):
        y, olens, _ = enc(x, torch.tensor([30, 25, 30]))
    assert enc.nonfinite_rows == [2]
    assert "non-finite values (NaN/inf) in the encoder input at batch row(s) [2] of 3" \
        in caplog.text
    assert torch.isfinite(y[:2]).all() and not torch.isfinite(y[2]).all()
    y.sum().backward()
    # what ESPnet's trainer sees: a non-finite gradient norm, so it skips the update
    norm = torch.nn.utils.clip_grad_norm_(enc.parameters(), max_norm=1e9)
    assert not torch.isfinite(norm)
