"""espnet_mamba/integration/pad_mask.py: ESPnet's make_pad_mask in linear memory, same masks;
ESPnet's front-end on 20 minutes of audio fits in memory through it."""

import itertools
import os
import subprocess
import sys

import pytest
import torch

from espnet2.legacy.nets.pytorch_backend import nets_utils
from espnet_mamba.integration import names
from espnet_mamba.integration.pad_mask import linear_pad_mask

ORIGINAL = getattr(nets_utils.make_pad_mask, "_espnet_original", nets_utils.make_pad_mask)


def test_patched_at_import():
    """The hook replaced ESPnet's function before its front-end modules bound the name."""
    from espnet2.layers import log_mel
    assert getattr(nets_utils.make_pad_mask, "_espnet_mamba_linear", False)
    assert log_mel.make_pad_mask is nets_utils.make_pad_mask


@pytest.mark.parametrize("shape,length_dim", [
    (None, -1), ((3, 9), -1), ((3, 9), 1), ((3, 9, 4), 1), ((3, 4, 9), 2), ((3, 4, 9), -1)])
def test_same_masks_as_espnet(shape, length_dim):
    lengths = torch.tensor([9, 0, 5])
    xs = None if shape is None else torch.zeros(shape)
    for maxlen in ([None, 9, 12] if shape is None else [None]):
        want = ORIGINAL(lengths, xs, length_dim, maxlen)
        got = nets_utils.make_pad_mask(lengths, xs, length_dim, maxlen)
        assert got.dtype == want.dtype and torch.equal(got, want), (shape, length_dim, maxlen)
        assert torch.equal(linear_pad_mask(lengths, xs, length_dim, maxlen), want)


def test_lengths_longer_than_xs_are_clipped_as_espnet():
    lengths, xs = torch.tensor([12, 3]), torch.zeros(2, 7, 5)
    for dim in (1, -1):
        x = xs if dim == 1 else xs.transpose(1, 2)
        assert torch.equal(nets_utils.make_pad_mask(lengths, x, dim), ORIGINAL(lengths, x, dim))


def test_random_cases_match():
    gen = torch.Generator().manual_seed(0)
    for batch, frames in itertools.product([1, 4], [1, 17]):
        lengths = torch.randint(0, frames + 1, (batch,), generator=gen)
        xs = torch.zeros(batch, frames, 3)
        assert torch.equal(nets_utils.make_pad_mask(lengths, xs, 1), ORIGINAL(lengths, xs, 1))


def test_long_input_is_linear_in_memory():
    """20 minutes of frames: the original needs a 120001^2 matrix (14 GB); this, 1 row."""
    frames = 120_001
    got = nets_utils.make_pad_mask(torch.tensor([frames - 5]), torch.zeros(1, frames, 2), 1)
    assert got.shape == (1, frames, 2) and got[0, -5:].all() and not got[0, :-5].any()


def test_tracing_uses_espnets_function(monkeypatch):
    """While tracing / exporting to ONNX, ESPnet's own (traceable) function runs."""
    from espnet_mamba.integration import pad_mask

    def fail(*args):
        raise AssertionError("linear path taken while tracing")

    monkeypatch.setattr(pad_mask, "linear_pad_mask", fail)
    monkeypatch.setattr(pad_mask, "_tracing", lambda: True)
    lengths, xs = torch.tensor([5, 2]), torch.zeros(2, 5, 3)
    assert torch.equal(nets_utils.make_pad_mask(lengths, xs, 1), ORIGINAL(lengths, xs, 1))
    monkeypatch.setattr(pad_mask, "_tracing", lambda: False)
    with pytest.raises(AssertionError, match="linear path"):
        nets_utils.make_pad_mask(lengths, xs, 1)


def test_front_end_of_a_twenty_minute_recording_fits():
    """ESPnet's front-end (STFT, LogMel, utterance MVN) on 20 minutes of 16 kHz audio in a fresh
    process: with ESPnet's own make_pad_mask its LogMel and MVN build 120001^2 matrices (14 GB
    each) and are killed on a 24 GiB machine; through the hook's linear version (integration/
    pad_mask.py) the process stays below 3 GiB (measured ~1.5 GiB)."""
    code = """
import torch
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.layers.utterance_mvn import UtteranceMVN
n = 20 * 60 * 16000
x, lens = torch.randn(1, n) * 0.1, torch.tensor([n])
with torch.no_grad():
    feats, flens = DefaultFrontend(fs=16000, n_fft=512, hop_length=160, n_mels=80)(x, lens)
    feats, flens = UtteranceMVN()(feats, flens)
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(tuple(feats.shape), int(flens[0]), bool(torch.isfinite(feats).all()), peak // 1024)
"""
    env = {k: v for k, v in os.environ.items() if k != names.DISABLE_ENV}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    shape, frames, finite, peak_mib = out.stdout.strip().splitlines()[-1].rsplit(" ", 3)
    assert shape == "(1, 120001, 80)" and frames == "120001" and finite == "True"
    assert int(peak_mib) < 3072, peak_mib
