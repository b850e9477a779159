"""Selective scan of Mamba (v1): h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,  y_t = C_t h_t + D u_t.

The interface is mamba-ssm's ``selective_scan_fn`` (same argument names and layouts), so the CUDA
kernel and the PyTorch path are interchangeable:

    u, delta, z: (batch, d_inner, length);  A: (d_inner, d_state);  B, C: (batch, d_state, length)
    or grouped (batch, groups, d_state, length), channel i reading group i // (d_inner / groups)
    D, delta_bias: (d_inner,);  returns y (batch, d_inner, length) [, last_state (batch, d_inner, d_state)]

The PyTorch path runs the recurrence itself (same arithmetic as the reference loop, exact) over
*windows* of W time steps (:func:`window_steps`: ~1M state numbers, at least d_state steps).
Per window, the decays exp(dt A) and the inputs dt u B of all W steps are computed at once into
buffers that every window reuses, then one fused multiply-add per step writes the states over
the inputs, then y = C . h for the whole window.  So no (batch, d_inner, length, d_state) tensor
is ever built: a window's buffers are the largest thing, and a 20-minute recording decodes on a
CPU.  Decays are exp of non-positive numbers (A < 0, dt >= 0): nothing overflows.

With autograd, :class:`_WindowedScan` keeps for backward only its inputs and the state before each
window, (length / W) x (batch, d_inner, d_state) <= one (batch, length, d_inner) tensor, so training
memory is O(batch x length x d_inner).  Backward recomputes one window's states at a time from
its kept start and runs the adjoint recurrence backwards through it.  Without autograd
(decoding) nothing is kept and nothing recomputed.

Padding: a time step with dt = 0 leaves the state untouched (decay 1, input 0).  The mixers set
dt = 0 on padded frames, so ``last_state`` is the state at each sequence's own end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from espnet_mamba.ops.backend import fp32_scan, kernel_module, use_kernels


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # The state is accumulated in fp32 (as the kernel does) or fp64 when asked for.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# Elements of one window's (steps, batch, d_inner, d_state) buffers: ~4 MiB in fp32, so that a
# window's states stay in cache between the steps that write them and the product that reads them.
WINDOW_ELEMENTS = 1 << 20


def window_steps(length: int, batch: int, d_inner: int, d_state: int) -> int:
    """Time steps per window: WINDOW_ELEMENTS worth of states, and at least d_state, so that the
    chunk-start states kept for backward, (length / window) x (batch, d_inner, d_state), are no
    larger than one (batch, length, d_inner) tensor."""
    per_step = max(1, batch * d_inner * d_state)
    return max(1, min(length, max(d_state, WINDOW_ELEMENTS // per_step)))


def _states(h, decay, inputs):
    """The states of one window, written over ``inputs`` (w, ...) in place: h_k = decay_k h_{k-1}
    + inputs_k from h_{-1} = ``h``.  One fused op per step; the exp and the outer products were
    computed for the whole window at once."""
    hs, ds = inputs.unbind(0), decay.unbind(0)
    hs[0].addcmul_(ds[0], h)
    for k in range(1, len(hs)):
        hs[k].addcmul_(ds[k], hs[k - 1])
    return inputs


class _Windows:
    """Steps s..e-1 of time-major tensors, dt_t, du_t (l, b, G, c, 1); A_g (G, c, n);
    B_t (l, b, G, 1, n); C_t (l, b, G, n, 1), computed in (window, b, G, c, n) buffers that
    every window reuses: a fresh buffer of a few MiB per window costs more (page faults) than
    the arithmetic done in it."""

    def __init__(self, dt_t, du_t, A_g, B_t, window, buffers=2):
        self.dt_t, self.du_t, self.A_g, self.B_t = dt_t, du_t, A_g, B_t
        shape = (window,) + dt_t.shape[1:-1] + A_g.shape[-1:]
        self.buf = [dt_t.new_empty(shape) for _ in range(buffers)]

    def states(self, h, s, e):
        """(decays, states) of steps s..e-1 from the state h before step s."""
        decay = torch.mul(self.dt_t[s:e], self.A_g, out=self.buf[0][:e - s]).exp_()  # of <= 0
        inputs = torch.mul(self.du_t[s:e], self.B_t[s:e], out=self.buf[1][:e - s])
        return decay, _states(h, decay, inputs)


def _scan_windows(dt_t, du_t, A_g, B_t, C_t, window, keep_starts):
    """Forward: y (l, b, G, c, 1), the last state (b, G, c, n) and, if asked, the state
    before each window."""
    length = dt_t.shape[0]
    h = dt_t.new_zeros(dt_t.shape[1:-1] + A_g.shape[-1:])
    y = dt_t.new_empty(dt_t.shape)
    starts, windows = [], _Windows(dt_t, du_t, A_g, B_t, window)
    for s in range(0, length, window):
        e = min(s + window, length)
        if keep_starts:
            starts.append(h)
        decay, states = windows.states(h, s, e)
        # y = states @ C as a product and a sum over d_state: on a CPU twice as fast as the
        # batched matrix-vector product (decay's buffer is free again for the product)
        torch.sum(torch.mul(states, C_t[s:e].transpose(-1, -2), out=decay), dim=-1,
                  keepdim=True, out=y[s:e])
        h = states[-1].clone()  # the buffer is reused by the next window
    return y, h, starts


class _WindowedScan(torch.autograd.Function):
    """The scan with autograd at O(batch x length x d_inner) memory: forward keeps only the
    state before each window; backward recomputes one window's states at a time and runs the
    adjoint recurrence  g_t = C_t gy_t + decay_{t+1} g_{t+1}  backwards through it."""

    @staticmethod
    def forward(ctx, dt_t, u_t, A_g, B_t, C_t, window):
        y, last, starts = _scan_windows(dt_t, dt_t * u_t, A_g, B_t, C_t, window,
                                        keep_starts=True)
        ctx.window = window
        ctx.save_for_backward(dt_t, u_t, A_g, B_t, C_t, *starts)
        return y, last

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_last):
        dt_t, u_t, A_g, B_t, C_t, *starts = ctx.saved_tensors
        window, length = ctx.window, dt_t.shape[0]
        du_t = dt_t * u_t
        if gy is None:
            gy = torch.zeros_like(dt_t)
        # dL/dh of the state before the window after the one being processed
        carry = torch.zeros_like(starts[0]) if g_last is None else g_last.clone()
        g_dt, g_du = torch.empty_like(dt_t), torch.empty_like(dt_t)
        g_B, g_C = torch.empty_like(B_t), torch.empty_like(C_t)
        g_A = torch.zeros_like(A_g)
        windows = _Windows(dt_t, du_t, A_g, B_t, window, buffers=4)
        adj_buf, prev_buf = windows.buf[2], windows.buf[3]
        for i in reversed(range(len(starts))):
            s = i * window
            e = min(s + window, length)
            decay, states = windows.states(starts[i], s, e)
            # adjoint of every state: C_t gy_t, then the backward recurrence in place
            adj = torch.mul(gy[s:e], C_t[s:e].transpose(-1, -2), out=adj_buf[:e - s])
            adjs, ds = adj.unbind(0), decay.unbind(0)
            adjs[-1].add_(carry)
            for k in range(len(adjs) - 2, -1, -1):
                adjs[k].addcmul_(ds[k + 1], adjs[k + 1])
            carry = ds[0] * adjs[0]
            g_C[s:e] = torch.matmul(gy[s:e].transpose(-1, -2), states).transpose(-1, -2)
            g_B[s:e] = torch.matmul(du_t[s:e].transpose(-1, -2), adj)
            torch.matmul(adj, B_t[s:e].transpose(-1, -2), out=g_du[s:e])
            # d/d(dt A) of decay_t h_{t-1}: adj_t h_{t-1} decay_t, with h_{t-1} the window's
            # start state, then its own states
            prev = prev_buf[:e - s]
            prev[0] = starts[i]
            prev[1:] = states[:-1]
            g_dA = prev.mul_(decay).mul_(adj)
            g_A += torch.einsum("wbgcn,wbgcx->gcn", g_dA, dt_t[s:e])
            torch.sum(g_dA.mul_(A_g), dim=-1, keepdim=True, out=g_dt[s:e])
        g_dt += g_du * u_t
        g_u = g_du * dt_t
        return g_dt, g_u, g_A, g_B, g_C, None


@fp32_scan
def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, chunk_size: int | None = None,
):
    """``chunk_size``: time steps per window (default :func:`window_steps`); the result does not
    depend on it."""
    out_dtype = u.dtype
    cdt = _compute_dtype(u)
    u, delta, A, B, C = (t.to(cdt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    batch, d_inner, length = u.shape
    B, C = _grouped(B, d_inner), _grouped(C, d_inner)  # (b, G, n, l)
    if B.shape != C.shape:
        raise ValueError(f"B and C must have the same shape; got {tuple(B.shape)} and "
                         f"{tuple(C.shape)}")
    G, d_state = B.shape[1], A.shape[1]
    A_g = A.view(G, d_inner // G, d_state)  # channel c of group g: row g * d_inner/G + c
    window = max(1, min(chunk_size, length)) if chunk_size else window_steps(
        length, batch, d_inner, d_state)

    # Time-major, state laid out (batch, G, d_inner/G, d_state): one step is a contiguous slice
    # and y_t = h_t @ C_t is one batched matrix product.
    def time_major(t):  # (b, G*c, l) -> (l, b, G, c, 1)
        return t.view(batch, G, -1, length).permute(3, 0, 1, 2).unsqueeze(-1).contiguous()

    dt_t, u_t = time_major(delta), time_major(u)
    B_t = B.permute(3, 0, 1, 2).unsqueeze(-2).contiguous()  # l,b,G,1,n
    C_t = C.permute(3, 0, 1, 2).unsqueeze(-1).contiguous()  # l,b,G,n,1
    if torch.is_grad_enabled() and any(t.requires_grad for t in (dt_t, u_t, A_g, B_t, C_t)):
        y, last_state = _WindowedScan.apply(dt_t, u_t, A_g, B_t, C_t, window)
    else:  # decoding: nothing kept, nothing recomputed
        y, last_state, _ = _scan_windows(dt_t, dt_t * u_t, A_g, B_t, C_t, window, False)
    # the kernel's layout, (batch, d_inner, length) contiguous: a caller must not see which
    # path ran (torch.randn_like(y), y.view(...) and the like follow the strides)
    y = y.view(length, batch, d_inner).permute(1, 2, 0).contiguous()
    last_state = last_state.reshape(batch, d_inner, d_state)
    return _finish(y, u, D, z, cdt, out_dtype, last_state, return_last_state)


def _grouped(BC, d_inner):
    """B or C as (batch, groups, d_state, length): mamba-ssm's grouped layout, where channel i
    reads group i // (d_inner / groups); (batch, d_state, length) is one group."""
    if BC.dim() == 3:
        return BC.unsqueeze(1)
    if BC.dim() != 4 or d_inner % BC.shape[1]:
        raise ValueError(f"B and C must be (batch, d_state, length) or (batch, groups, d_state, "
                         f"length) with groups dividing d_inner={d_inner}; got {tuple(BC.shape)}")
    return BC


def _finish(y, u, D, z, cdt, out_dtype, last_state, return_last_state):
    if D is not None:
        y = y + u * D.to(cdt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdt))
    y = y.to(out_dtype)
    return (y, last_state) if return_last_state else y


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, backend: str | None = None,
):
    """Dispatch to mamba-ssm's ``selective_scan_fn`` or to :func:`selective_scan_torch`."""
    if use_kernels(backend, "selective_scan", u, delta, A, B, C):
        fn = kernel_module("selective_scan").selective_scan_fn
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                  delta_softplus=delta_softplus, return_last_state=return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                delta_softplus=delta_softplus, return_last_state=return_last_state)


def selective_state_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                         backend: str | None = None):
    """One recurrent step.  state: (b, d, n); x, dt, z: (b, d); B, C: (b, n).

    Returns (y, new_state); the input state is not modified (beam search keeps old states).
    """
    if use_kernels(backend, "selective_state_update", state, x):
        new_state = state.clone()  # the triton kernel updates in place
        fn = kernel_module("selective_state_update").selective_state_update
        y = fn(new_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
        return y, new_state
    cdt = _compute_dtype(x)
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    new_state = (torch.exp(dt[..., None] * A.to(cdt)) * state.to(cdt)
                 + (dt * x.to(cdt))[..., None] * B.to(cdt)[:, None, :])
    y = (new_state * C.to(cdt)[:, None, :]).sum(-1)
    if D is not None:
        y = y + x.to(cdt) * D.to(cdt)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype), new_state.to(state.dtype)


def fused_mamba_inner_available(backend: str | None, *tensors) -> bool:
    """True if the whole v1 mixer (conv, projections, scan) can run as mamba-ssm's one
    ``mamba_inner_fn`` call (CUDA tensors, both kernel packages importable)."""
    return (use_kernels(backend, "selective_scan", *tensors)
            and kernel_module("causal_conv1d") is not None)


def fused_mamba_inner(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                      out_proj_weight, out_proj_bias, A, D, dt_bias):
    """mamba-ssm's fused v1 mixer: xz (b, 2*d_inner, l) -> (b, l, d_model)."""
    fn = kernel_module("selective_scan").mamba_inner_fn
    return fn(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, out_proj_weight,
              out_proj_bias, A, None, None, D, delta_bias=dt_bias, delta_softplus=True)
