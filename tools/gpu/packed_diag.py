"""Where does Mamba2's packed path (``seq_idx``) leave the padded result?  GPU diagnostic.

    python3 tools/gpu/packed_diag.py          # after tools/gpu/session.sh set the machine up

tests/gpu/test_models_cuda.py::test_packed_encoder_cuda found the encoder 0.4-2% off (H100,
2026-11-22), so ``modules/mamba2.py: NATIVE_SEQ_IDX`` is off.  This narrows it down, printing one
line per case (relative errors of outputs and of input gradients, fp32, TF32 off):
  * the Mamba2 mixer alone, packed through the fused kernel vs each sequence run alone;
  * sequence lengths all >= d_conv vs some shorter than the convolution (hypothesis: a
    sequence shorter than the conv width is mishandled), one sequence vs several;
  * ngroups / headdim / chunk sizes around the test's configuration.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import torch  # noqa: E402

from espnet_mamba.modules.mamba2 import Mamba2  # noqa: E402
from espnet_mamba.modules.packing import Packing  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def case(lengths, d_model=64, headdim=16, ngroups=1, d_state=16, chunk_size=256):
    torch.manual_seed(0)
    mixer = Mamba2(d_model, d_state=d_state, headdim=headdim, ngroups=ngroups,
                   chunk_size=chunk_size, backend="cuda").cuda()
    lens = torch.tensor(lengths, device="cuda")
    x = torch.randn(len(lengths), max(lengths), d_model, device="cuda")
    packing = Packing(lens, x.shape[1])
    xp = packing.pack(x).detach().requires_grad_()
    yp = _native(mixer, xp, packing)
    (yp * yp.detach().cos()).sum().backward()
    errs_y, errs_g = [], []
    starts = torch.cumsum(lens, 0) - lens
    for i, n in enumerate(lengths):  # each sequence alone, unpadded: the ground truth
        xi = x[i:i + 1, :n].detach().requires_grad_()
        yi = mixer(xi)
        (yi * yi.detach().cos()).sum().backward()
        s = int(starts[i])
        errs_y.append(rel(yp[0, s:s + n], yi[0]))
        errs_g.append(rel(xp.grad[0, s:s + n], xi.grad[0]))
    return max(errs_y), max(errs_g)


def _native(mixer, x, packing):
    from espnet_mamba.ops.ssd import fused_mamba2_split_scan
    zxbcdt = mixer.in_proj(x)
    return fused_mamba2_split_scan(
        zxbcdt, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, mixer.dt_bias,
        -torch.exp(mixer.A_log.float()), mixer.D, mixer.chunk_size, mixer.norm.weight,
        mixer.norm.eps, mixer.out_proj.weight, mixer.out_proj.bias, mixer.headdim,
        mixer.ngroups, seq_idx=packing.seq_idx)


def main():
    cases = {
        "one sequence (16)": dict(lengths=[16]),
        "test's lengths (16,4,11,1)": dict(lengths=[16, 4, 11, 1]),
        "all >= d_conv (16,6,11,5)": dict(lengths=[16, 6, 11, 5]),
        "long (300,120,257,64)": dict(lengths=[300, 120, 257, 64]),
        "long, chunk 64": dict(lengths=[300, 120, 257, 64], chunk_size=64),
        "ngroups 2": dict(lengths=[16, 6, 11, 5], ngroups=2),
        "headdim 64, d_state 64": dict(lengths=[16, 6, 11, 5], d_model=128, headdim=64,
                                       d_state=64),
    }
    for name, kw in cases.items():
        try:
            ey, eg = case(**kw)
            print(f"{name:32s} outputs {ey:.2e}  input grads {eg:.2e}", flush=True)
        except Exception as err:  # noqa: BLE001 - a diagnostic: report and go on
            print(f"{name:32s} ERROR {type(err).__name__}: {err}", flush=True)


if __name__ == "__main__":
    main()
