"""Packed variable-length batches (modules/packing.py, encoder option ``pack_sequences``)."""

import pytest
import torch

from espnet_mamba.modules.packing import Packing
from espnet_mamba.modules.padding import reverse_padded
from model_checks import packed_vs_padded_error


def test_pack_unpack_reverse():
    lengths = torch.tensor([3, 7, 1, 5])
    x = torch.randn(4, 7, 2)
    p = Packing(lengths, 7)
    packed = p.pack(x)
    assert packed.shape == (1, 16, 2)
    assert p.seq_idx.tolist() == [[0] * 3 + [1] * 7 + [2] + [3] * 5]
    assert torch.equal(packed[0, 3:10], x[1])
    mask = (torch.arange(7)[None] < lengths[:, None])[..., None]
    assert torch.equal(p.unpack(packed), x * mask)
    assert torch.equal(p.unpack(p.reverse(packed)), reverse_padded(x, lengths) * mask)
    assert torch.equal(p.reverse(p.reverse(packed)), packed)


# the packed path is a Mamba2 option: v1 mixers run a packed row padded whatever it says
MIXER_PATHS = [("mamba", "fused")] + [("mamba2", p) for p in ("fused", "unfused", "padded")]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("mixer,path", MIXER_PATHS)
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_packed_encoder_equals_padded(name, mixer, path, bidirectional, monkeypatch):
    """Outputs and every gradient are the same with and without packing (PyTorch path, fp64),
    for every way a Mamba2 mixer can run a packed row."""
    from espnet_mamba.modules import mamba2
    monkeypatch.setattr(mamba2, "PACKED_PATH", path)
    assert packed_vs_padded_error(name, mixer, bidirectional=bidirectional) < 1e-10


@pytest.mark.parametrize("input_layer",
                         ["conv2d2", "conv2d6", "conv2d8", "conv2d1", "conv1d2", "linear", None])
def test_packed_input_layers_equal_padded(input_layer):
    """Every input layer on the packed batch (encoders/input_layer.py ``packed``): the same
    output frames and lengths, outputs and gradients (fp64).  conv2d8 needs 15 frames: the
    9-frame utterance then has no output frame at all."""
    assert packed_vs_padded_error("samba_asr", "mamba2", input_layer=input_layer,
                                  idim=64 if input_layer is None else 20) < 1e-10


def test_packed_input_layer_reads_only_its_utterance():
    """Changing one utterance's frames (or the padding) changes no other utterance's packed
    input-layer output: the slots start at multiples of the stride."""
    from espnet_mamba.encoders.input_layer import InputLayer
    torch.manual_seed(0)
    layer = InputLayer("conv2d6", 20, 16, 0.0).double()
    x = torch.randn(3, 40, 20, dtype=torch.float64)
    il = torch.tensor([17, 40, 25])
    row, packing = layer.packed(x, il.tolist())
    assert packing.lengths.tolist() == [2, 5, 3]  # ((L - 3) // 2 + 1 - 5) // 3 + 1
    x2 = x.clone()
    x2[0] += 1.0
    x2[2, 25:] = 7.0  # padding
    row2, _ = layer.packed(x2, il.tolist())
    assert not torch.equal(row[0, :2], row2[0, :2])
    assert torch.equal(row[0, 2:], row2[0, 2:])


def test_input_layer_of_unknown_geometry_is_run_padded_then_packed(monkeypatch):
    """An input layer whose convolutions pad or dilate (none of ESPnet's today) has no packed
    geometry: ``packed`` runs it on the padded batch and packs its output, still exact."""
    from espnet_mamba.encoders.input_layer import InputLayer
    torch.manual_seed(0)
    layer = InputLayer("conv2d", 20, 16, 0.0).double()
    x = torch.randn(3, 40, 20, dtype=torch.float64)
    lengths = [17, 40, 25]
    row, packing = layer.packed(x, lengths)
    monkeypatch.setattr(layer, "time_convs", None)
    row_padded, packing_padded = layer.packed(x, lengths)
    assert packing_padded.lengths.tolist() == packing.lengths.tolist() == [3, 9, 5]
    assert torch.allclose(row_padded, row, rtol=0, atol=1e-12)


def test_packed_batch_with_no_frame_left_takes_the_padded_route():
    """Every utterance shorter than the subsampling's receptive field: ESPnet's zero lengths,
    as without packing (a packed row of no frames has nothing to run)."""
    from model_checks import ENCODERS, MIXER_CONF
    kw = dict(output_size=32, num_blocks=1, mixer="mamba2", d_state=16,
              mixer_conf=MIXER_CONF["mamba2"], dropout_rate=0.0)
    torch.manual_seed(0)
    padded = ENCODERS["samba_asr"](20, **kw)
    packed = ENCODERS["samba_asr"](20, pack_sequences=True, **kw)
    packed.load_state_dict(padded.state_dict())
    x, il = torch.randn(2, 10, 20), torch.tensor([5, 3])
    assert packed.embed.packed(x, [5, 3]) is None
    (y_a, len_a, _), (y_b, len_b, _) = padded(x, il), packed(x, il)
    assert len_a.tolist() == len_b.tolist() == [0, 0] and torch.equal(y_a, y_b)


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


def test_unknown_packed_path_in_the_environment_is_named():
    import os
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-c", "import espnet_mamba.modules.mamba2"], capture_output=True,
        text=True, env={**os.environ, "ESPNET_MAMBA_PACKED_MIXER": "fast"})
    assert proc.returncode != 0
    assert "ESPNET_MAMBA_PACKED_MIXER='fast'" in proc.stderr and "unfused" in proc.stderr


def test_widths_the_kernels_cannot_take_packed_run_unfused(monkeypatch):
    """mamba-ssm's fused mixer takes seq_idx only when in_proj's width and the conv's channels
    are multiples of 8 (nheads 10 here makes the width odd-sized): such mixers run the unfused
    path instead of failing inside the kernel."""
    from espnet_mamba.modules import mamba2
    from espnet_mamba.modules.packing import Packing
    mixer = mamba2.Mamba2(320, d_state=16, headdim=64).double()
    assert mixer.in_proj.out_features % 8 != 0
    monkeypatch.setattr(mamba2, "fused_mamba2_available", lambda *a: True)

    def kernel(*args, **kwargs):
        raise AssertionError("the fused kernel was called with a width it refuses")
    monkeypatch.setattr(mamba2, "fused_mamba2_split_scan", kernel)
    lengths = torch.tensor([5, 3])
    packing = Packing(lengths, 5)
    x = torch.randn(2, 5, 320, dtype=torch.float64)
    packed = mixer(packing.pack(x), packing=packing)
    monkeypatch.setattr(mamba2, "fused_mamba2_available", lambda *a: False)
    assert torch.allclose(packing.unpack(packed), mixer(x, lengths), atol=1e-12)


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
