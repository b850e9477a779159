"""Decoders on the CUDA kernels: teacher forcing vs beam-search steps, and the two ESPnet
searches, with the same checks as the CPU tests (fp32 tolerances)."""

import pytest
import torch

from model_checks import (
    ENCODERS, MIXER_CONF, encoder_padding_error, packed_vs_padded_error, run_beam_searches,
    teacher_forcing_vs_steps, tiny_decoder,
)

pytestmark = pytest.mark.gpu
PAIRS = [(name, mixer) for name in ("samba_asr", "speech_mamba") for mixer in MIXER_CONF]


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_teacher_forcing_equals_batch_score_cuda(name, mixer):
    dec = tiny_decoder(name, mixer, device="cuda", dtype=torch.float32, backend="cuda")
    assert teacher_forcing_vs_steps(dec, device="cuda", dtype=torch.float32) < 1e-4


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_beam_searches_agree_cuda(name, mixer):
    dec = tiny_decoder(name, mixer, device="cuda", dtype=torch.float32, backend="cuda")
    _, (single, batched) = run_beam_searches(dec, 0.0, device="cuda", dtype=torch.float32)
    assert [h.yseq.tolist() for h in single] == [h.yseq.tolist() for h in batched]


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_encoder_padding_cuda(name, mixer):
    enc = ENCODERS[name](20, output_size=64, num_blocks=2, mixer=mixer, d_state=16,
                         mixer_conf=MIXER_CONF[mixer], backend="cuda").cuda().eval()
    assert encoder_padding_error(enc, device="cuda", dtype=torch.float32) < 1e-4


@pytest.mark.parametrize("path", ["padded", "fused", "unfused"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_packed_encoder_cuda(name, bidirectional, path, monkeypatch):
    """Packed (pack_sequences) == the padded batch on CUDA, for each way the Mamba2 mixers can
    run a packed row (espnet_mamba/modules/mamba2.py PACKED_PATH)."""
    from espnet_mamba.modules import mamba2
    monkeypatch.setattr(mamba2, "PACKED_PATH", path)
    err = packed_vs_padded_error(name, "mamba2", device="cuda", dtype=torch.float32,
                                 backend="cuda", bidirectional=bidirectional)
    assert err < 1e-4
