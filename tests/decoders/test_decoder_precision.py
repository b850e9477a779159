"""The decoders under bf16 autocast: the SSM parameters (A_log, D, dt bias) and their gradients
stay fp32, logits, loss and gradients are finite, and so are the log-probs of decoding steps."""

import pytest
import torch

from model_checks import DECODERS, MIXER_CONF, VOCAB, check_fp32_ssm

PAIRS = [(name, mixer) for name in ("samba_asr", "speech_mamba") for mixer in MIXER_CONF]


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_decoder_autocast_bf16_keeps_ssm_parameters_fp32(name, mixer):
    extra = {"attention_heads": 2} if name == "speech_mamba" else {}
    dec = DECODERS[name](VOCAB, 16, num_blocks=1, mixer=mixer, d_state=4,
                         mixer_conf=MIXER_CONF[mixer], **extra).train()
    hs, hl = torch.randn(2, 12, 16), torch.tensor([12, 7])
    ys, yl = torch.randint(0, VOCAB, (2, 5)), torch.tensor([5, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = dec(hs, hl, ys, yl)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ys.flatten())
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    check_fp32_ssm(dec, 3)
    # decoding steps under autocast: finite log-probs, fp32 SSM state
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        state = dec.init_state(hs[0])
        logp, state = dec.score(torch.tensor([VOCAB - 1, 2]), state, hs[0])
    assert torch.isfinite(logp).all()
