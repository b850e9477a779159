"""Streaming a causal Samba-ASR encoder on the GPU with the CUDA kernels (backend cuda): the
chunked output equals the full-utterance forward on the same backend, and the PyTorch path's
full forward on the CPU with the same weights (fp32, rel. error < 1e-4), for both mixers, chunk
by chunk (``step_chunk``) and frame by frame (``step``); the state between chunks keeps its
size.

Run with `pytest -m gpu tests/gpu`; CI (CPU only) deselects them.
"""

import pytest
import torch
from model_checks import MIXER_CONF

from espnet_mamba.encoders.samba_asr import SambaASREncoder
from espnet_mamba.encoders.streaming import StreamingEncoder

pytestmark = pytest.mark.gpu
IDIM = 20


def causal(mixer, backend):
    torch.manual_seed(0)
    return SambaASREncoder(IDIM, output_size=64, num_blocks=2, mixer=mixer, d_state=16,
                           bidirectional=False, mixer_conf=MIXER_CONF[mixer],
                           backend=backend).eval()


def full(enc, feats):
    with torch.no_grad():
        out, _, _ = enc(feats[None], torch.tensor([len(feats)], device=feats.device))
    return out[0]


def rel(a, b):
    return ((a.float().cpu() - b.float().cpu()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("frame_by_frame", [False, True], ids=["step_chunk", "step"])
@pytest.mark.parametrize("sizes", [[1], [13], [32], [5, 40, 1, 17]],
                         ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
def test_streaming_encoder_cuda_equals_full_forward(mixer, sizes, frame_by_frame):
    enc = causal(mixer, "cuda").cuda()
    reference_torch = causal(mixer, "torch")
    reference_torch.load_state_dict({k: v.cpu() for k, v in enc.state_dict().items()})
    feats = torch.randn(301, IDIM, generator=torch.Generator().manual_seed(1))
    streamer = StreamingEncoder(enc, frame_by_frame=frame_by_frame)
    outs, start, k, state_sizes = [], 0, 0, set()
    gpu_feats = feats.cuda()
    while start < len(feats):
        size = sizes[k % len(sizes)]
        start, k = start + size, k + 1
        outs.append(streamer(gpu_feats[start - size:start], is_final=start >= len(feats)))
        if start < len(feats) and streamer.states is not None:
            state_sizes.add(streamer.state_numel() - streamer.pending.numel())
    got = torch.cat(outs)
    want = full(enc, gpu_feats)
    assert got.is_cuda and got.shape == want.shape
    assert rel(got, want) < 1e-4
    assert rel(got, full(reference_torch, feats)) < 1e-4  # and the PyTorch path's
    assert len(state_sizes) == 1, state_sizes  # the mixer states keep their size
