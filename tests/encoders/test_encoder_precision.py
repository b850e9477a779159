"""The encoders under mixed precision: bf16 autocast keeps the SSM parameters (A_log, D, dt bias)
and their gradients in fp32 with finite outputs; an encoder cast to bf16 still scans in fp32;
intermediate CTC in an encoder cast to bf16 (docs/reliability.md, "Mixed precision")."""

import copy

import pytest
import torch

from model_checks import ENCODERS, MIXER_CONF, check_fp32_ssm, ssm_parameters, tiny_encoder

PAIRS = [(name, mixer) for name in ("samba_asr", "speech_mamba") for mixer in MIXER_CONF]


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_encoder_autocast_bf16_keeps_ssm_parameters_fp32(name, mixer):
    enc = tiny_encoder(name, mixer).train()
    x, il = torch.randn(2, 60, 20), torch.tensor([60, 41])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ol, _ = enc(x, il)
        loss = y.float().square().mean()
    assert y.dtype == torch.bfloat16  # autocast was really on
    assert torch.isfinite(y).all() and torch.isfinite(loss)
    loss.backward()
    check_fp32_ssm(enc, 3)


@pytest.mark.parametrize("mixer", sorted(MIXER_CONF))
def test_model_cast_to_bf16_still_scans_in_fp32(mixer):
    """``model.to(torch.bfloat16)`` (e.g. Speech2Text(dtype="bfloat16")) casts A_log, D and the
    dt bias too, as with mamba-ssm.  The mixers read them with ``.float()`` and the PyTorch scans
    accumulate the state in fp32, so the result stays within bf16 rounding of the fp32 model
    over a long input (no error that grows with the length)."""
    enc = tiny_encoder("samba_asr", mixer).eval()
    x, il = torch.randn(1, 2000, 20), torch.tensor([2000])
    with torch.no_grad():
        ref = enc(x, il)[0]
        low = copy.deepcopy(enc).to(torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in ssm_parameters(low).values())
        y = low(x.bfloat16(), il)[0]
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
    late = ((y.float() - ref)[:, -100:].abs().max() / ref.abs().max()).item()
    assert err < 0.05 and late < 0.05, (err, late)


@pytest.mark.parametrize("conditioning", [False, True])
def test_intermediate_ctc_in_a_model_cast_to_bf16(conditioning):
    """The residual stream is fp32 (ops/rms_norm.py); restarting it after an intermediate-CTC
    layer must still feed the next layer in the model's dtype."""
    enc = ENCODERS["samba_asr"](20, output_size=32, num_blocks=3, interctc_layer_idx=[1, 2],
                                interctc_use_conditioning=conditioning, d_state=8).eval()
    ctc = None
    if conditioning:
        class _CTC(torch.nn.Module):
            def softmax(self, h):
                return torch.softmax(h[..., :5], -1)
        ctc = _CTC()
        enc.conditioning_layer = torch.nn.Linear(5, 32)
    enc = enc.to(torch.bfloat16)
    with torch.no_grad():
        (y, inter), _, _ = enc(torch.randn(2, 60, 20, dtype=torch.bfloat16),
                               torch.tensor([60, 41]), ctc=ctc)
    assert y.dtype == torch.bfloat16 and [i for i, _ in inter] == [1, 2]
    assert all(h.dtype == torch.bfloat16 and torch.isfinite(h).all() for _, h in inter)
