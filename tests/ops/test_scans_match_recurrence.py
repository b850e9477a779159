"""PyTorch scans (windowed v1 scan, chunked SSD) against the float64 step-by-step recurrence."""

import pytest
import torch
import torch.nn.functional as F

from espnet_mamba.ops.selective_scan import selective_scan_torch, selective_state_step
from espnet_mamba.ops.ssd import ssd_scan_torch, ssd_step
from espnet_mamba.ops.reference import selective_scan_loop, ssd_loop
from tensor_checks import rel_err

F64 = torch.float64


def v1_inputs(b, d, n, l, requires_grad=False):
    t = dict(
        u=torch.randn(b, d, l, dtype=F64), delta=torch.randn(b, d, l, dtype=F64) - 1,
        A=-torch.rand(d, n, dtype=F64) * 4 - 0.1, B=torch.randn(b, n, l, dtype=F64),
        C=torch.randn(b, n, l, dtype=F64), D=torch.randn(d, dtype=F64),
        z=torch.randn(b, d, l, dtype=F64), delta_bias=torch.randn(d, dtype=F64) * 0.1,
    )
    for v in t.values():
        v.requires_grad_(requires_grad)
    return t


@pytest.mark.parametrize("b,d,n,l,chunk", [
    (1, 1, 1, 1, None), (2, 3, 4, 1, None), (2, 5, 3, 17, None), (3, 4, 8, 100, 7),
    (1, 6, 16, 64, 64), (2, 2, 2, 33, 1), (2, 8, 4, 257, None)])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad_path", "autograd_path"])
def test_selective_scan_matches_loop(b, d, n, l, chunk, grad):
    """Both PyTorch paths: without autograd, and with it (the windowed autograd Function)."""
    t = v1_inputs(b, d, n, l, requires_grad=grad)
    y, last = selective_scan_torch(**t, delta_softplus=True, return_last_state=True,
                                   chunk_size=chunk)
    with torch.no_grad():
        y_ref, last_ref = selective_scan_loop(**t, delta_softplus=True)
    assert y.dtype == F64 and y.shape == (b, d, l)
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(last, last_ref) < 1e-12


def test_selective_scan_gradients_match_loop():
    t = v1_inputs(2, 3, 4, 45, requires_grad=True)
    y = selective_scan_torch(**t, delta_softplus=True, chunk_size=6)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), list(t.values()))
    y_ref, _ = selective_scan_loop(**t, delta_softplus=True)
    grads_ref = torch.autograd.grad((y_ref * w).sum(), list(t.values()))
    for name, g, g_ref in zip(t, grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-10, name


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("l,chunk", [(37, None), (37, 5), (1, None)])
def test_grouped_selective_scan_equals_one_scan_per_group(grad, l, chunk):
    """B/C of shape (batch, groups, n, l), mamba-ssm's grouped layout (channel i reads group
    i // (d / groups)): the same as scanning each group's channels alone, values, final state
    and gradients; with and without autograd."""
    torch.manual_seed(0)
    b, G, c, n = 2, 2, 6, 4
    d = G * c
    leaves = dict(u=torch.randn(b, d, l), delta=torch.randn(b, d, l), A=-torch.rand(d, n) * 3,
                  B=torch.randn(b, G, n, l), C=torch.randn(b, G, n, l), D=torch.randn(d),
                  z=torch.randn(b, d, l), bias=torch.randn(d))
    leaves = {k: v.double().requires_grad_(grad) for k, v in leaves.items()}

    def scan(u, delta, A, B, C, D, z, bias):
        return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=bias,
                                    delta_softplus=True, return_last_state=True,
                                    chunk_size=chunk)

    with torch.set_grad_enabled(grad):
        y, last = scan(**leaves)
        parts = [scan(*(leaves[k][:, g * c:(g + 1) * c] for k in ("u", "delta")),
                      leaves["A"][g * c:(g + 1) * c], leaves["B"][:, g], leaves["C"][:, g],
                      leaves["D"][g * c:(g + 1) * c], leaves["z"][:, g * c:(g + 1) * c],
                      leaves["bias"][g * c:(g + 1) * c]) for g in range(G)]
        y_ref = torch.cat([p[0] for p in parts], 1)
        last_ref = torch.cat([p[1] for p in parts], 1)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(last, last_ref) < 1e-12
    if grad:
        g1 = torch.autograd.grad(y.square().sum() + last.sum(), list(leaves.values()))
        g2 = torch.autograd.grad(y_ref.square().sum() + last_ref.sum(), list(leaves.values()))
        assert all(rel_err(a, e) < 1e-12 for a, e in zip(g1, g2))


def test_grouped_selective_scan_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match="groups dividing d_inner=5"):
        selective_scan_torch(torch.randn(1, 5, 3), torch.rand(1, 5, 3), -torch.rand(5, 2),
                             torch.randn(1, 2, 2, 3), torch.randn(1, 2, 2, 3))


def test_selective_scan_large_decay_is_finite_in_fp32():
    # dt * A of -1e3 per step: a method that divides by cumulative decays would overflow
    t = v1_inputs(1, 2, 3, 50)
    t = {k: v.float() for k, v in t.items()}
    t["delta"] = torch.full_like(t["delta"], 30.0)
    t["A"] = torch.full_like(t["A"], -40.0)
    y = selective_scan_torch(**t)
    assert torch.isfinite(y).all()
    y_ref, _ = selective_scan_loop(**{k: v.double() for k, v in t.items()})
    assert rel_err(y.double(), y_ref) < 1e-5


def test_selective_state_step_matches_scan():
    t = v1_inputs(2, 3, 4, 12)
    y_ref, last_ref = selective_scan_loop(**t, delta_softplus=True)
    state = torch.zeros(2, 3, 4, dtype=F64)
    for i in range(12):
        y, state = selective_state_step(state, t["u"][..., i], t["delta"][..., i], t["A"],
                                        t["B"][..., i], t["C"][..., i], t["D"],
                                        z=t["z"][..., i], dt_bias=t["delta_bias"],
                                        dt_softplus=True)
        assert rel_err(y, y_ref[..., i]) < 1e-12
    assert rel_err(state, last_ref) < 1e-12


def ssd_inputs(b, l, h, p, g, n, requires_grad=False):
    t = dict(x=torch.randn(b, l, h, p, dtype=F64),
             dt=F.softplus(torch.randn(b, l, h, dtype=F64) - 1),
             A=-torch.rand(h, dtype=F64) * 4 - 0.1, B=torch.randn(b, l, g, n, dtype=F64),
             C=torch.randn(b, l, g, n, dtype=F64), D=torch.randn(h, dtype=F64))
    for v in t.values():
        v.requires_grad_(requires_grad)
    return t


@pytest.mark.parametrize("b,l,h,p,g,n,chunk", [
    (1, 1, 1, 1, 1, 1, 64), (2, 17, 4, 3, 2, 5, 8), (2, 100, 2, 4, 1, 8, 64),
    (1, 130, 4, 2, 4, 3, 16), (3, 9, 2, 2, 1, 2, 1)])
def test_ssd_matches_loop(b, l, h, p, g, n, chunk):
    t = ssd_inputs(b, l, h, p, g, n)
    init = torch.randn(b, h, p, n, dtype=F64)
    y, final = ssd_scan_torch(**t, chunk_size=chunk, initial_states=init,
                              return_final_states=True)
    y_ref, final_ref = ssd_loop(**t, initial_state=init)
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(final, final_ref) < 1e-12


def test_ssd_gradients_match_loop():
    t = ssd_inputs(2, 37, 2, 3, 1, 4, requires_grad=True)
    y = ssd_scan_torch(**t, chunk_size=8)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), list(t.values()))
    grads_ref = torch.autograd.grad((ssd_loop(**t)[0] * w).sum(), list(t.values()))
    for name, g, g_ref in zip(t, grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-10, name


def test_ssd_step_matches_scan():
    t = ssd_inputs(2, 10, 4, 3, 2, 5)
    y_ref, final_ref = ssd_loop(**t)
    state = torch.zeros(2, 4, 3, 5, dtype=F64)
    for i in range(10):
        y, state = ssd_step(state, t["x"][:, i], t["dt"][:, i], t["A"], t["B"][:, i],
                            t["C"][:, i], D=t["D"])
        assert rel_err(y, y_ref[:, i]) < 1e-12
    assert rel_err(state, final_ref) < 1e-12
