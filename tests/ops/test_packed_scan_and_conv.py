"""The ops on a packed row (``seq_idx``): the chunked SSD scan and the causal conv1d carry
nothing across an utterance boundary; channels the conv kernel cannot take packed run on the
PyTorch path; the input dtype is kept."""

import pytest
import torch

LENGTHS = [5, 1, 9, 3, 7]  # a one-step utterance, and utterances across chunk boundaries


def _seq_idx():
    return torch.repeat_interleave(torch.arange(len(LENGTHS)), torch.tensor(LENGTHS))[None]


@pytest.mark.parametrize("chunk", [4, 8, 64])
def test_ssd_scan_with_seq_idx_equals_each_utterance_alone(chunk):
    """The PyTorch chunk scan with seq_idx: no state crosses an utterance boundary, inside a
    chunk or across chunks (values and gradients, fp64)."""
    from espnet_mamba.ops.ssd import ssd_scan_torch
    torch.manual_seed(0)
    total, h = sum(LENGTHS), 3
    leaves = [torch.randn(1, total, h, 2, dtype=torch.float64),
              torch.randn(1, total, h, dtype=torch.float64),
              torch.randn(1, total, 1, 4, dtype=torch.float64),
              torch.randn(1, total, 1, 4, dtype=torch.float64)]
    A, D = -torch.rand(h, dtype=torch.float64) - 0.5, torch.randn(h, dtype=torch.float64)
    proj = torch.randn(1, total, h, 2, dtype=torch.float64)

    def grads(fn):
        ins = [t.clone().requires_grad_() for t in leaves]
        y = fn(*ins)
        return [y, *torch.autograd.grad((y * proj).sum(), ins)]

    def packed(x, dt, B, C):
        return ssd_scan_torch(x, dt, A, B, C, chunk, D=D, dt_softplus=True, seq_idx=_seq_idx())

    def alone(x, dt, B, C):
        out, start = [], 0
        for n in LENGTHS:
            sl = slice(start, start + n)
            out.append(ssd_scan_torch(x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], chunk, D=D,
                                      dt_softplus=True))
            start += n
        return torch.cat(out, 1)
    for a, b in zip(grads(packed), grads(alone)):
        assert (a - b).abs().max() < 1e-12


def test_causal_conv1d_with_seq_idx_equals_each_utterance_alone():
    from espnet_mamba.ops.causal_conv1d import causal_conv1d
    torch.manual_seed(0)
    x = torch.randn(1, 6, sum(LENGTHS), dtype=torch.float64)
    w, b = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    alone = torch.cat([causal_conv1d(part, w, b, "silu")
                       for part in x.split(LENGTHS, dim=2)], 2)
    assert (causal_conv1d(x, w, b, "silu", seq_idx=_seq_idx()) - alone).abs().max() < 1e-14


def test_channels_the_conv_kernel_cannot_take_packed_use_pytorch(monkeypatch):
    from espnet_mamba.ops import causal_conv1d as conv_ops
    monkeypatch.setattr(conv_ops, "use_kernels", lambda *a: True)
    monkeypatch.setattr(conv_ops, "kernel_module", lambda name: (_ for _ in ()).throw(
        AssertionError("the kernel was asked for 6 channels with seq_idx")))
    x, w = torch.randn(1, 6, sum(LENGTHS)), torch.randn(6, 4)
    y = conv_ops.causal_conv1d(x, w, None, "silu", seq_idx=_seq_idx())
    assert y.shape == x.shape


def test_packed_conv_keeps_the_input_dtype():
    from espnet_mamba.ops.causal_conv1d import causal_conv1d
    x = torch.randn(1, 8, sum(LENGTHS), dtype=torch.bfloat16)
    y = causal_conv1d(x, torch.randn(8, 4), torch.randn(8), "silu", seq_idx=_seq_idx())
    assert y.dtype == torch.bfloat16
