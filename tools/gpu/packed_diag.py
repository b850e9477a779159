"""Where does Mamba2's packed path (``seq_idx``) leave the result of each sequence alone?  GPU.

    MAMBA_DETERMINISTIC=1 python3 tools/gpu/packed_diag.py OUT.json

Sessions 2-6 saw tests/gpu/test_models_cuda.py::test_packed_encoder_cuda 0.4-2 % off (H100,
2026-11-22) and kept the native path off.  This checks each piece of the fused mixer on its
own, packed (one row, utterances end to end, ``seq_idx``) against each sequence run alone (the
ground truth), fp32, TF32 off, triton's fp32 dots in IEEE:
  * ``conv``: causal-conv1d's ``causal_conv1d_fn`` (channel-last, as mamba-ssm calls it);
  * ``scan``: mamba-ssm's ``mamba_chunk_scan_combined``;
  * ``fused_scan``: ``mamba_split_conv1d_scan_combined`` without norm and out_proj;
  * ``mixer``: our Mamba2 mixer, packed path "fused" (norm and out_proj included);
  * ``unfused``: our Mamba2 mixer, packed path "unfused" (causal_conv1d + chunk scan + norm).
Session 7 (docs/benchmarks.md): every piece agrees (< 1e-5); the test's loss had no gradients.
Each line gives the relative error of the outputs and of every input's gradient.  Lengths cover
sequences shorter than the convolution (a one-frame utterance, as in the test), chunks holding
several utterances, utterances across chunk boundaries and the benchmark's LibriSpeech-like batch.

Why MAMBA_DETERMINISTIC=1 (before mamba-ssm is imported; the .pth hook imports espnet_mamba at
start-up, so set it in the environment): it makes mamba-ssm keep one autotuning configuration
per kernel.  With all of them, triton compiles every configuration of every new ``seq_idx``
specialisation with ptxas, which took over 10 minutes on the H200 (docs/gpu.md, session 3).  The
kernels then run in their ordinary (non-deterministic) mode: ``set_deterministic_mode(False)``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import torch  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

CASES = {
    "one sequence (16)": dict(lengths=[16]),
    "test (16,4,11,1)": dict(lengths=[16, 4, 11, 1]),
    "all >= d_conv (16,6,11,5)": dict(lengths=[16, 6, 11, 5]),
    "long (300,120,257,64)": dict(lengths=[300, 120, 257, 64]),
    "long, chunk 64": dict(lengths=[300, 120, 257, 64], chunk_size=64),
    "ngroups 2": dict(lengths=[16, 6, 11, 5], ngroups=2),
    "benchmark (d512, headdim 64, d_state 64)": dict(
        lengths=[52, 117, 182, 280, 370, 487, 650, 865], d_model=512, headdim=64, d_state=64),
}


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def leaf(t):
    return t.detach().clone().requires_grad_()


def compare(fn, inputs, lengths, time_dims):
    """fn(*inputs, seq_idx) on the packed inputs vs fn on each sequence's slice (seq_idx None).

    ``time_dims[i]``: the time axis of input i (None: a parameter, shared by all sequences);
    outputs have time on axis 1.  Returns {name: rel. error} for outputs and gradients.
    """
    total = sum(lengths)
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), device="cuda", dtype=torch.int32),
                                      torch.tensor(lengths, device="cuda"))[None].contiguous()
    packed = [leaf(t) for t in inputs]
    out = fn(*packed, seq_idx=seq_idx)
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    alone = [leaf(t) for t in inputs]
    outs, start = [], 0
    for n in lengths:
        sliced = [t if d is None else t.narrow(d, start, n) for t, d in zip(alone, time_dims)]
        o = fn(*sliced, seq_idx=None)
        (o * weight.narrow(1, start, n)).sum().backward()
        outs.append(o)
        start += n
    assert start == total
    errs = {"out": rel(out, torch.cat(outs, 1))}
    for i, (p, a) in enumerate(zip(packed, alone)):
        if p.grad is not None:
            errs[f"grad{i}"] = rel(p.grad, a.grad)
    return errs


def conv_case(lengths, d_model=64, headdim=16, ngroups=1, d_state=16, chunk_size=256):
    from causal_conv1d import causal_conv1d_fn
    dim = 2 * d_model + 2 * ngroups * d_state
    x = torch.randn(1, sum(lengths), dim, device="cuda")
    w, b = torch.randn(dim, 4, device="cuda") * 0.3, torch.randn(dim, device="cuda") * 0.1

    def fn(x, w, b, seq_idx):  # channel-last, as mamba_split_conv1d_scan_combined calls it
        xl = x.transpose(1, 2) if seq_idx is not None else x.contiguous().transpose(1, 2)
        return causal_conv1d_fn(xl, w, b, seq_idx=seq_idx, activation="silu").transpose(1, 2)
    return compare(fn, [x, w, b], lengths, [1, None, None])


def scan_case(lengths, d_model=64, headdim=16, ngroups=1, d_state=16, chunk_size=256):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    total, nheads = sum(lengths), 2 * d_model // headdim
    x = torch.randn(1, total, nheads, headdim, device="cuda")
    dt = torch.randn(1, total, nheads, device="cuda") - 2
    B, C = (torch.randn(1, total, ngroups, d_state, device="cuda") for _ in range(2))
    A = -torch.rand(nheads, device="cuda") * 4 - 0.5
    D, dt_bias = torch.randn(nheads, device="cuda"), torch.randn(nheads, device="cuda") * 0.1

    def fn(x, dt, B, C, A, D, dt_bias, seq_idx):
        return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias,
                                         seq_idx=seq_idx, dt_softplus=True)
    return compare(fn, [x, dt, B, C, A, D, dt_bias], lengths, [1, 1, 1, 1, None, None, None])


def _mixer(d_model, headdim, ngroups, d_state, chunk_size):
    from espnet_mamba.modules.mamba2 import Mamba2
    torch.manual_seed(0)
    return Mamba2(d_model, d_state=d_state, headdim=headdim, ngroups=ngroups,
                  chunk_size=chunk_size, backend="cuda").cuda()


def fused_scan_case(lengths, d_model=64, headdim=16, ngroups=1, d_state=16, chunk_size=256):
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
    m = _mixer(d_model, headdim, ngroups, d_state, chunk_size)
    zxbcdt = torch.randn(1, sum(lengths), m.in_proj.out_features, device="cuda")

    def fn(zxbcdt, conv_w, conv_b, dt_bias, A_log, D, seq_idx):
        return mamba_split_conv1d_scan_combined(
            zxbcdt, conv_w, conv_b, dt_bias, -torch.exp(A_log), D, chunk_size, seq_idx=seq_idx,
            activation="silu", headdim=headdim, ngroups=ngroups)
    params = [m.conv1d.weight.squeeze(1), m.conv1d.bias, m.dt_bias, m.A_log, m.D]
    return compare(fn, [zxbcdt, *params], lengths, [1] + [None] * 5)


def mixer_case(lengths, path="fused", **kw):
    """Our Mamba2 mixer, packed through ``PACKED_PATH`` = path, vs each sequence alone."""
    from espnet_mamba.modules import mamba2
    from espnet_mamba.modules.packing import Packing
    m = _mixer(kw.get("d_model", 64), kw.get("headdim", 16), kw.get("ngroups", 1),
               kw.get("d_state", 16), kw.get("chunk_size", 256))
    x = torch.randn(1, sum(lengths), m.d_model, device="cuda")
    names = [n for n, _ in m.named_parameters()]
    packing = Packing(torch.tensor(lengths, device="cuda"), max(lengths))

    def fn(x, *params, seq_idx):
        state = dict(zip(names, params))
        if seq_idx is None:  # one sequence, no mask: the fused kernel (== PyTorch, tested)
            return torch.func.functional_call(m, state, (x,))
        assert torch.equal(seq_idx, packing.seq_idx)
        saved, mamba2.PACKED_PATH = mamba2.PACKED_PATH, path
        try:
            return torch.func.functional_call(m, state, (x,), {"packing": packing})
        finally:
            mamba2.PACKED_PATH = saved
    return compare(fn, [x, *[p.detach() for p in m.parameters()]], lengths,
                   [1] + [None] * len(names))


PIECES = {
    "conv": conv_case,
    "scan": scan_case,
    "fused_scan": fused_scan_case,
    "mixer": mixer_case,
    "unfused": lambda lengths, **kw: mixer_case(lengths, path="unfused", **kw),
}


def main(argv):
    from mamba_ssm.utils import determinism
    determinism.set_deterministic_mode(False)  # configs were chosen at import; run as in training
    report = {"MAMBA_DETERMINISTIC": os.environ.get("MAMBA_DETERMINISTIC"),
              "device": torch.cuda.get_device_name(), "cases": {}}
    out = argv[0] if argv else None
    for case, kw in CASES.items():
        for piece, fn in PIECES.items():
            torch.manual_seed(0)
            try:
                errs = fn(**kw)
                worst = max(errs.values())
                line = " ".join(f"{k} {v:.1e}" for k, v in errs.items())
                print(f"{case:42s} {piece:10s} {'OK  ' if worst < 1e-4 else 'OFF '} {line}",
                      flush=True)
            except Exception as err:  # noqa: BLE001 - a diagnostic: report and go on
                errs = {"error": f"{type(err).__name__}: {err}"}
                print(f"{case:42s} {piece:10s} ERROR {errs['error']}", flush=True)
                traceback.print_exc()
            report["cases"].setdefault(case, {})[piece] = errs
            if out:
                with open(out, "w") as f:
                    json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
