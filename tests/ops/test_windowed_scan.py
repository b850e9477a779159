"""The windowed selective scan (PyTorch path): any window gives the recurrence's values and
gradients, backward recomputes each window once, and decoding (no autograd) recomputes nothing;
its outputs have the kernel's layout (contiguous), so that tensors made "like" them are the
same whichever path ran."""

import pytest
import torch

from espnet_mamba.ops.reference import selective_scan_loop
from espnet_mamba.ops.selective_scan import selective_scan_torch, window_steps
from tensor_checks import rel_err

F64 = torch.float64


def inputs(b=2, d=4, n=3, l=23, groups=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    bc = (b, n, l) if groups is None else (b, groups, n, l)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    t = dict(u=randn(b, d, l), delta=randn(b, d, l) - 1,
             A=-torch.rand(d, n, generator=g, dtype=F64) * 4 - 0.1, B=randn(*bc), C=randn(*bc),
             D=randn(d), z=randn(b, d, l), delta_bias=randn(d) * 0.1)
    return {k: v.requires_grad_() for k, v in t.items()}


@pytest.mark.parametrize("window", [1, 2, 5, 23, 64])
@pytest.mark.parametrize("loss", ["y", "last_state", "both"])
def test_gradients_match_loop_for_any_window(window, loss):
    """Windows that divide the length or not, one step, longer than the sequence; gradients
    through y only, the last state only (no gradient reaches y) and both."""
    t = inputs()
    w = torch.randn(2, 4, 23, dtype=F64)

    def objective(y, last):
        return {"y": (y * w).sum(), "last_state": last.square().sum(),
                "both": (y * w).sum() + last.square().sum()}[loss]

    y, last = selective_scan_torch(**t, delta_softplus=True, return_last_state=True,
                                   chunk_size=window)
    # D and z do not reach the last state: their gradients are zeros
    grads = torch.autograd.grad(objective(y, last), list(t.values()), materialize_grads=True)
    y_ref, last_ref = selective_scan_loop(**t, delta_softplus=True)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(last, last_ref) < 1e-12
    grads_ref = torch.autograd.grad(objective(y_ref, last_ref), list(t.values()),
                                    materialize_grads=True)
    for name, g, g_ref in zip(t, grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-10, name


def test_grouped_gradients_match_loop():
    t = inputs(d=6, groups=3, l=17)
    y = selective_scan_torch(**t, delta_softplus=True, chunk_size=4)
    grads = torch.autograd.grad(y.square().sum(), list(t.values()))
    # the loop reads one group of B/C: run it per group
    parts = []
    for gi in range(3):
        sl = slice(2 * gi, 2 * gi + 2)
        parts.append(selective_scan_loop(
            t["u"][:, sl], t["delta"][:, sl], t["A"][sl], t["B"][:, gi], t["C"][:, gi],
            t["D"][sl], t["z"][:, sl], t["delta_bias"][sl], delta_softplus=True)[0])
    y_ref = torch.cat(parts, 1)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), list(t.values()))
    for name, g, g_ref in zip(t, grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-10, name


def test_only_some_inputs_need_gradients():
    """Frozen A and D (e.g. fine-tuning some parameters): gradients of the others unchanged."""
    t = inputs()
    for k in ("A", "D", "delta_bias"):
        t[k].requires_grad_(False)
    y = selective_scan_torch(**t, delta_softplus=True, chunk_size=4)
    g = torch.autograd.grad(y.sum(), t["u"])[0]
    y_ref, _ = selective_scan_loop(**t, delta_softplus=True)
    assert rel_err(g, torch.autograd.grad(y_ref.sum(), t["u"])[0]) < 1e-10


class _CountExp:
    """Counts aten exp calls (each computes the decays of one window)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket in (torch.ops.aten.exp, torch.ops.aten.exp_):
                    outer.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


@pytest.mark.parametrize("z", [True, False])
def test_outputs_have_the_kernels_layout(z):
    t = inputs()
    if not z:
        t.pop("z")
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            y, last = selective_scan_torch(**t, delta_softplus=True, return_last_state=True)
        assert y.is_contiguous() and last.is_contiguous(), (y.stride(), last.stride())
    # weights drawn "like" the output index the same elements as for the per-step loop's
    want = selective_scan_loop(**t, delta_softplus=True)[0]
    w = torch.randn_like(want, generator=torch.Generator().manual_seed(1))
    got = selective_scan_torch(**t, delta_softplus=True)
    assert torch.equal(torch.randn_like(got, generator=torch.Generator().manual_seed(1)), w)


def test_decoding_recomputes_nothing_and_backward_each_window_once():
    t = inputs(l=40)
    windows = 40 // 8
    with torch.no_grad(), _CountExp() as no_grad:
        selective_scan_torch(**t, chunk_size=8)
    assert no_grad.n == windows
    with _CountExp() as train:
        y = selective_scan_torch(**t, chunk_size=8)
        y.sum().backward()
    assert train.n == 2 * windows  # forward, and one recomputation in backward


def test_default_window_keeps_at_most_one_state_per_d_state_steps():
    """What backward keeps, one state per window, is about one (batch, length, d_inner)
    tensor at most."""
    for batch, d_inner, d_state, length in [(16, 1024, 16, 250), (1, 1024, 16, 3000),
                                            (2, 64, 128, 50), (1, 8, 4, 1)]:
        w = window_steps(length, batch, d_inner, d_state)
        assert 1 <= w <= length
        assert w >= min(d_state, length)
        kept = -(-length // w) * batch * d_inner * d_state  # one state per window
        assert kept <= batch * (length + d_state) * d_inner
