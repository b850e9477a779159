"""benchmarks/cuda_graph_encoder.py: an encoder's training step with its layers replayed from
CUDA graphs == the eager step (outputs and every parameter's gradient), over two steps (the
second replays), in fp32 and under bf16 autocast."""

import sys
from pathlib import Path

import pytest
import torch

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
def test_graphed_training_step_equals_eager_cuda(name, mixer, amp):
    torch.manual_seed(0)
    enc = ENCODERS[name](20, output_size=64, num_blocks=2, mixer=mixer, d_state=16,
                         mixer_conf=MIXER_CONF[mixer], dropout_rate=0.0).cuda().train()
    graphed = GraphedEncoder(enc)
    x = torch.randn(3, 120, 20, device="cuda")
    ilens = torch.tensor([120, 97, 60], device="cuda")
    tol = 2e-2 if amp else 1e-4
    for _ in range(2):  # capture, then replay
        y_e, len_e, g_e = train_step(enc, x, ilens, amp)
        y_g, len_g, g_g = train_step(graphed, x, ilens, amp)
        assert torch.equal(len_e, len_g)
        assert (y_g - y_e).abs().max() <= tol * y_e.abs().max()
        for n, g in g_e.items():
            assert (g_g[f"enc.{n}"] - g).abs().max() <= tol * max(g.abs().max(), 1e-6), n
    assert len(graphed.graphed) == 1
