"""benchmarks/cuda_graph_encoder.py: an encoder's training step with its layers replayed from
CUDA graphs == the eager step (outputs and every parameter's gradient), over two steps (the
second replays, on new inputs and lengths), in fp32 and under bf16 autocast, with the triton
add+RMSNorm the benchmark sizes use; with dropout, replays draw new masks."""

import sys
from pathlib import Path

import pytest
import torch

from espnet_mamba.ops import rms_norm
from model_checks import ENCODERS, MIXER_CONF

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from cuda_graph_encoder import GraphedEncoder  # noqa: E402

pytestmark = pytest.mark.gpu


def train_step(enc, x, ilens, amp):
    enc.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
        y, olens, _ = enc(x, ilens)
    y.float().square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in enc.named_parameters()}
    return y.detach().float(), olens, grads


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("mixer", sorted(MIXER_CONF))
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_graphed_training_step_equals_eager_cuda(name, mixer, amp, monkeypatch):
    monkeypatch.setattr(rms_norm, "TRITON_MIN_NUMEL", 0)  # the triton norm, as at full size
    torch.manual_seed(0)
    enc = ENCODERS[name](20, output_size=64, num_blocks=2, mixer=mixer, d_state=16,
                         mixer_conf=MIXER_CONF[mixer], dropout_rate=0.0).cuda().train()
    graphed = GraphedEncoder(enc)
    tol = 2e-2 if amp else 1e-4
    for lengths in ([120, 97, 60], [120, 61, 33]):  # capture, then replay on new inputs
        x = torch.randn(3, 120, 20, device="cuda")
        ilens = torch.tensor(lengths, device="cuda")
        y_e, len_e, g_e = train_step(enc, x, ilens, amp)
        y_g, len_g, g_g = train_step(graphed, x, ilens, amp)
        assert torch.equal(len_e, len_g)
        assert (y_g - y_e).abs().max() <= tol * y_e.abs().max()
        for n, g in g_e.items():
            assert (g_g[f"enc.{n}"] - g).abs().max() <= tol * max(g.abs().max(), 1e-6), n
    assert len(graphed.graphed) == 1 and graphed.captures == 1
    assert graphed.capture_error is None


def test_graphed_training_step_with_dropout_cuda():
    """Dropout inside the graph (torch's and the triton add+RMSNorm's): finite outputs and
    gradients, and a new mask on every replay."""
    torch.manual_seed(0)
    enc = ENCODERS["samba_asr"](20, output_size=64, num_blocks=2, d_state=16,
                                dropout_rate=0.1).cuda().train()
    graphed = GraphedEncoder(enc)
    x = torch.randn(2, 120, 20, device="cuda")
    ilens = torch.tensor([120, 90], device="cuda")
    outs = []
    for _ in range(3):
        y, _, grads = train_step(graphed, x, ilens, amp=True)
        assert y.isfinite().all() and all(g.isfinite().all() for g in grads.values())
        outs.append(y)
    assert graphed.captures == 1 and graphed.capture_error is None
    assert not torch.equal(outs[1], outs[2])
