"""CUDA kernels (mamba-ssm, causal-conv1d) against the PyTorch path, on the GPU machine.

Run with `pytest -m gpu tests/gpu`; CI (CPU only) deselects them.  fp32: rel. error < 1e-4 for
values and gradients; bf16: finite.
"""

import pytest
import torch

from espnet_mamba.modules.mamba import Mamba
from espnet_mamba.modules.mamba2 import Mamba2
from espnet_mamba.ops import causal_conv1d as conv_ops
from espnet_mamba.ops import rms_norm as norm_ops
from espnet_mamba.ops.selective_scan import selective_scan
from espnet_mamba.ops.ssd import ssd_scan

pytestmark = pytest.mark.gpu
DEV = "cuda"


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def assert_close(pairs, tol=1e-4):
    """pairs: {name: (cuda, torch)}; fails with every relative error listed."""
    errs = {k: rel(a, b) for k, (a, b) in pairs.items() if a is not None and b is not None}
    assert max(errs.values()) < tol, errs


def assert_same_training_step(cuda, ref, x, lengths=None):
    """Two modules with the same weights (CUDA kernels, PyTorch path): forward and backward of
    the same input, outputs, input gradients and every parameter gradient within assert_close."""
    outs = []
    for m in (cuda, ref):
        xi = x.clone().requires_grad_()
        y = m(xi, lengths)
        y.square().mean().backward()
        outs.append((y, xi.grad, {k: p.grad for k, p in m.named_parameters()}))
    assert_close({"y": (outs[0][0], outs[1][0]), "dx": (outs[0][1], outs[1][1]),
                  **{f"d{k}": (outs[0][2][k], outs[1][2][k]) for k in outs[0][2]}})


def both(fn, inputs):
    """Run fn on backend cuda and torch with the same leaf inputs; return outputs and grads."""
    results = []
    for backend in ("cuda", "torch"):
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point())
                  for k, v in inputs.items()}
        out = fn(backend=backend, **leaves)
        out = out[0] if isinstance(out, tuple) else out
        w = torch.randn_like(out, generator=torch.Generator(DEV).manual_seed(1))
        grads = torch.autograd.grad((out.float() * w).sum(),
                                    [v for v in leaves.values() if v.requires_grad],
                                    allow_unused=True)
        results.append((out, grads))
    return results


def test_selective_scan_cuda_vs_torch():
    b, d, n, l = 2, 64, 16, 300
    inp = dict(u=torch.randn(b, d, l, device=DEV), delta=torch.randn(b, d, l, device=DEV),
               A=-torch.rand(d, n, device=DEV) * 4, B=torch.randn(b, n, l, device=DEV),
               C=torch.randn(b, n, l, device=DEV), D=torch.randn(d, device=DEV),
               z=torch.randn(b, d, l, device=DEV), delta_bias=torch.randn(d, device=DEV))
    (yc, gc), (yt, gt) = both(lambda **k: selective_scan(**k, delta_softplus=True), inp)
    assert_close({"y": (yc, yt), **{f"d{k}": p for k, p in zip(inp, zip(gc, gt))}})


@pytest.mark.parametrize("chunk_size", [None, 64], ids=["one_window", "windows_of_64"])
def test_selective_scan_paths_vs_loop_cuda(chunk_size):
    """Each path on the GPU against the per-step loop of ops/reference.py (one time step per
    iteration, autograd through it), values and every gradient: the mamba-ssm kernel, and the
    PyTorch path over one window of all 300 steps (its default here) or windows of 64."""
    from espnet_mamba.ops.reference import selective_scan_loop
    from espnet_mamba.ops.selective_scan import selective_scan_torch

    g = torch.Generator(DEV).manual_seed(0)
    b, d, n, l = 2, 64, 16, 300
    inp = dict(u=torch.randn(b, d, l, device=DEV, generator=g),
               delta=torch.randn(b, d, l, device=DEV, generator=g),
               A=-torch.rand(d, n, device=DEV, generator=g) * 4,
               B=torch.randn(b, n, l, device=DEV, generator=g),
               C=torch.randn(b, n, l, device=DEV, generator=g),
               D=torch.randn(d, device=DEV, generator=g),
               z=torch.randn(b, d, l, device=DEV, generator=g),
               delta_bias=torch.randn(d, device=DEV, generator=g))
    w = torch.randn(b, d, l, device=DEV, generator=g)

    def run(fn):
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
        out = fn(**leaves, delta_softplus=True)
        out = out[0] if isinstance(out, tuple) else out
        return out, torch.autograd.grad((out * w).sum(), list(leaves.values()))

    y_ref, g_ref = run(selective_scan_loop)
    paths = {"kernel": lambda **k: selective_scan(**k, backend="cuda"),
             "torch": lambda **k: selective_scan_torch(**k, chunk_size=chunk_size)}
    errors = {}
    for name, fn in paths.items():
        y, grads = run(fn)
        errors[name] = {"y": rel(y, y_ref), **{f"d{k}": rel(a, r)
                                               for k, a, r in zip(inp, grads, g_ref)}}
    assert all(max(e.values()) < 1e-4 for e in errors.values()), errors


def test_ssd_cuda_vs_torch():
    b, l, h, p, g, n = 2, 300, 4, 32, 1, 64
    inp = dict(x=torch.randn(b, l, h, p, device=DEV), dt=torch.randn(b, l, h, device=DEV),
               A=-torch.rand(h, device=DEV) * 4, B=torch.randn(b, l, g, n, device=DEV),
               C=torch.randn(b, l, g, n, device=DEV), D=torch.randn(h, device=DEV),
               dt_bias=torch.randn(h, device=DEV))
    (yc, gc), (yt, gt) = both(lambda **k: ssd_scan(**k, chunk_size=64, dt_softplus=True), inp)
    assert_close({"y": (yc, yt), **{f"d{k}": p for k, p in zip(inp, zip(gc, gt))}})


def test_conv_and_norm_cuda_vs_torch():
    x = torch.randn(2, 64, 100, device=DEV)
    w, bias = torch.randn(64, 4, device=DEV), torch.randn(64, device=DEV)
    (yc, gc), (yt, gt) = both(lambda **k: conv_ops.causal_conv1d(**k, activation="silu"),
                              dict(x=x, weight=w, bias=bias))
    assert rel(yc, yt) < 1e-4 and all(rel(a, b) < 1e-4 for a, b in zip(gc, gt))
    state = torch.randn(2, 64, 4, device=DEV)
    sc = conv_ops.causal_conv1d_step(x[..., 0], state, w, bias, "silu", backend="cuda")
    st = conv_ops.causal_conv1d_step(x[..., 0], state, w, bias, "silu", backend="torch")
    assert rel(sc[0], st[0]) < 1e-4 and rel(sc[1], st[1]) < 1e-6
    h, nw = torch.randn(2, 50, 128, device=DEV), torch.randn(128, device=DEV)
    assert rel(norm_ops.rms_norm(h, nw, backend="cuda"),
               norm_ops.rms_norm(h, nw, backend="torch")) < 1e-4
    z = torch.randn_like(h)
    gcu = norm_ops.gated_rms_norm(h, z, nw, group_size=64, backend="cuda")
    gto = norm_ops.gated_rms_norm(h, z, nw, group_size=64, backend="torch")
    assert rel(gcu, gto) < 1e-4


@pytest.mark.parametrize("cls,kw", [(Mamba, {}), (Mamba2, dict(d_state=64, headdim=32))])
@pytest.mark.parametrize("masked", [False, True])
def test_mixer_cuda_vs_torch(cls, kw, masked):
    """Same weights: the fused kernels vs PyTorch, unpadded and right-padded (right padding
    keeps the fused path: causal outputs on valid frames do not see the padding)."""
    cuda = cls(128, **kw, backend="cuda").to(DEV)
    ref = cls(128, **kw, backend="torch").to(DEV)
    ref.load_state_dict(cuda.state_dict(), strict=True)
    x = torch.randn(3, 200, 128, device=DEV)
    lengths = torch.tensor([200, 150, 31], device=DEV) if masked else None
    assert_same_training_step(cuda, ref, x, lengths)


@pytest.mark.parametrize("lengths", [None, [200, 150, 31]])
def test_mamba_composed_path_cuda_vs_torch(lengths):
    """The v1 mixer without mamba_inner_fn (execution option fused_kernels: false: the kernels
    called one by one, as benchmarks/encoder_gpu.py's samba_asr_composed variant runs them)
    against the PyTorch path, values and every gradient."""
    from espnet_mamba.modules.execution import Execution

    cuda = Mamba(128, execution=Execution(backend="cuda", fused_kernels=False)).to(DEV)
    ref = Mamba(128, backend="torch").to(DEV)
    ref.load_state_dict(cuda.state_dict(), strict=True)
    x = torch.randn(3, 200, 128, device=DEV)
    lengths = None if lengths is None else torch.tensor(lengths, device=DEV)
    assert_same_training_step(cuda, ref, x, lengths)


@pytest.mark.parametrize("lengths", [None, [200, 150, 31]])
def test_bidirectional_merged_scan_cuda_vs_torch(lengths):
    """Both directions of a bidirectional v1 layer in one grouped selective_scan_fn call
    (execution option merge_directions: always, the samba_asr_merged benchmark variant)
    against the PyTorch path, values and every gradient."""
    from espnet_mamba.modules.execution import Execution
    from espnet_mamba.modules.factory import build_mixer

    cuda = build_mixer(128, "mamba", True,
                       execution=Execution(backend="cuda", merge_directions="always")).to(DEV)
    assert cuda._merge(torch.randn(1, 8, 128, device=DEV))
    ref = build_mixer(128, "mamba", True, "torch").to(DEV)
    ref.load_state_dict(cuda.state_dict(), strict=True)
    x = torch.randn(3, 200, 128, device=DEV)
    lengths = None if lengths is None else torch.tensor(lengths, device=DEV)
    assert_same_training_step(cuda, ref, x, lengths)


@pytest.mark.parametrize("cls,kw", [(Mamba, {}), (Mamba2, dict(d_state=64, headdim=32))])
def test_mixer_step_on_cuda(cls, kw):
    m = cls(128, **kw, backend="cuda").to(DEV).eval()
    x = torch.randn(2, 40, 128, device=DEV)
    with torch.no_grad():
        y, final = m(x, lengths=torch.tensor([40, 40], device=DEV), return_final_state=True)
        state = m.init_state(2, DEV)
        ys = []
        for t in range(40):
            yt, state = m.step(x[:, t], state)
            ys.append(yt)
    assert rel(torch.stack(ys, 1), y) < 1e-4
    assert rel(state[1], final[1]) < 1e-4


@pytest.mark.parametrize("cls,kw", [(Mamba, {}), (Mamba2, dict(d_state=64, headdim=32))])
def test_mixer_bf16_autocast_finite(cls, kw):
    m = cls(128, **kw).to(DEV)
    x = torch.randn(4, 500, 128, device=DEV, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.A_log.dtype == torch.float32 and m.D.dtype == torch.float32


@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_cuda_vs_torch(with_residual):
    """The fused dropout+add+norm of the encoder stacks (dropout 0: deterministic), values and
    gradients of pending, residual and weight; and that dropout > 0 keeps the expected scale."""
    torch.manual_seed(0)
    leaves = [torch.randn(2, 50, 128, device=DEV, requires_grad=True),
              torch.randn(2, 50, 128, device=DEV, requires_grad=True) if with_residual else None,
              torch.randn(128, device=DEV, requires_grad=True)]
    outs = {}
    for backend in ("cuda", "torch"):
        y, res = norm_ops.add_rms_norm(leaves[0], leaves[1], leaves[2], backend=backend)
        grads = torch.autograd.grad((y * y.detach().sin()).sum() + res.square().sum(),
                                    [t for t in leaves if t is not None])
        outs[backend] = (y, res, *grads)
    for a, b in zip(outs["cuda"], outs["torch"]):
        assert rel(a, b) < 1e-4
    x = torch.ones(4096, 256, device=DEV)
    _, res = norm_ops.add_rms_norm(x, None, torch.ones(256, device=DEV), dropout_p=0.25,
                                   backend="cuda")
    kept = (res != 0).float().mean().item()
    assert abs(kept - 0.75) < 0.01 and abs(res.mean().item() - 1.0) < 0.02


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_add_rms_norm_half_keeps_residual_fp32_cuda(dtype):
    """Half-precision sub-layer outputs: both backends keep the residual in fp32 (mamba-ssm's
    residual_in_fp32) and return the norm in the input dtype."""
    torch.manual_seed(0)
    pending = [torch.randn(2, 300, 256, device=DEV, dtype=dtype) for _ in range(2)]
    weight = torch.randn(256, device=DEV)
    outs = {}
    for backend in ("cuda", "torch"):
        y0, res = norm_ops.add_rms_norm(pending[0], None, weight, backend=backend)
        y1, res = norm_ops.add_rms_norm(pending[1], res, weight, backend=backend)
        assert res.dtype == torch.float32 and y0.dtype == y1.dtype == dtype
        outs[backend] = (y1.float(), res)
    for a, b in zip(outs["cuda"], outs["torch"]):
        assert rel(a, b) < 1e-2


@pytest.mark.parametrize("cls,kw", [(Mamba, {}), (Mamba2, dict(d_state=64, headdim=32))])
def test_conv_width_the_kernels_do_not_take_cuda(cls, kw):
    """d_conv 5 with backend auto on CUDA: the convolution runs on the PyTorch path (the
    causal-conv1d kernels take widths 2-4), nothing fused, the scan on the kernels; values
    and every gradient equal the PyTorch path's, and decoding steps too."""
    auto = cls(128, d_conv=5, **kw).to(DEV)
    ref = cls(128, d_conv=5, **kw, backend="torch").to(DEV)
    ref.load_state_dict(auto.state_dict(), strict=True)
    x = torch.randn(3, 200, 128, device=DEV)
    assert_same_training_step(auto, ref, x, torch.tensor([200, 150, 31], device=DEV))
    with torch.no_grad():
        state_a, state_r = auto.init_state(3, DEV), ref.init_state(3, DEV)
        for t in range(4):
            y_a, state_a = auto.step(x[:, t], state_a)
            y_r, state_r = ref.step(x[:, t], state_r)
            assert (y_a - y_r).abs().max() <= 1e-4 * y_r.abs().max()
