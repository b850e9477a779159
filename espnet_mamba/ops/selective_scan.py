"""Selective scan of Mamba (v1): h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,  y_t = C_t h_t + D u_t.

The interface is mamba-ssm's ``selective_scan_fn`` (same argument names and layouts), so the CUDA
kernel and the PyTorch path are interchangeable:

    u, delta, z: (batch, d_inner, length);  A: (d_inner, d_state);  B, C: (batch, d_state, length)
    or grouped (batch, groups, d_state, length), channel i reading group i // (d_inner / groups)
    D, delta_bias: (d_inner,);  returns y (batch, d_inner, length) [, last_state (batch, d_inner, d_state)]

With autograd, the PyTorch path is a *blocked* scan, exact (same recurrence, only reordered) and
without the per-time-step Python loop of mamba-ssm's reference (whose autograd graph of one node
per step makes the backward slow).  Without autograd (decoding), :func:`_scan_no_grad` runs one
fused step per time step, which does half the blocked scan's arithmetic.  The length is cut into M chunks of K steps
(K ~ sqrt(length/2)); then
  1. K vectorised steps run the recurrence inside every chunk at once from a zero state and keep
     each chunk's end state,
  2. M small steps carry the true state from chunk to chunk (chunk decay = exp(A * sum dt)),
  3. K vectorised steps run every chunk again from its true start state and emit y.
That is 2K + M Python steps instead of `length`, on tensors of shape (batch, d_inner, M, d_state),
so no (batch, d_inner, length, d_state) tensor is ever built: memory stays O(length / K) in
inference, which is what lets a 20-minute recording decode on a CPU.  All decays are exp of
non-positive numbers (A < 0, dt >= 0), so nothing overflows.

Padding: a time step with dt = 0 leaves the state untouched (decay 1, input 0).  The mixers set
dt = 0 on padded frames, so ``last_state`` is the state at each sequence's own end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from espnet_mamba.ops.backend import fp32_scan, kernel_module, use_kernels


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # The state is accumulated in fp32 (as the kernel does) or fp64 when asked for.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def default_chunk(length: int) -> int:
    """K minimising 2K + length/K (the number of Python steps)."""
    return max(1, int(round(math.sqrt(length / 2))))


@fp32_scan
def selective_scan_torch(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False, chunk_size: int | None = None,
):
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
    G = B.shape[1]
    A_g = A.view(G, d_inner // G, A.shape[1])  # channel c of group g: row g * d_inner/G + c
    if not (torch.is_grad_enabled() and any(
            t.requires_grad for t in (u, delta, A, B, C) if t is not None)):
        y, last_state = _scan_no_grad(u, delta, A_g, B, C)
        return _finish(y, u, D, z, cdt, out_dtype, last_state, return_last_state)
    K = chunk_size or default_chunk(length)
    M = -(-length // K)
    pad = M * K - length
    du = delta * u
    if pad:  # dt = 0 on the tail: identity steps that change neither y nor the state
        delta, du, B, C = (F.pad(t, (0, pad)) for t in (delta, du, B, C))

    # Time-major chunk views, state laid out (batch, M, G, d_inner/G, d_state) so that y = h @ C
    # is one batched matmul per step.
    def steps(t):  # (b, G*c, M*K) -> (K, b, M, G, c, 1)
        return t.view(batch, G, -1, M, K).permute(4, 0, 3, 1, 2).unsqueeze(-1)

    def bc_steps(t):  # (b, G, n, M*K) -> (K, b, M, G, n)
        return t.view(batch, G, t.shape[2], M, K).permute(4, 0, 3, 1, 2)

    dt_k = steps(delta)  # K,b,M,G,c,1
    du_k = steps(du)  # K,b,M,G,c,1
    B_k = bc_steps(B).unsqueeze(-2)  # K,b,M,G,1,n
    C_k = bc_steps(C).unsqueeze(-1)  # K,b,M,G,n,1

    # Pass 3 needs the same decays as pass 1; autograd keeps them anyway, so they are reused.
    decays = []

    def step(h, k, decay=None):
        if decay is None:
            decay = torch.exp(dt_k[k] * A_g)  # exp of <= 0: never overflows
            decays.append(decay)
        return torch.addcmul(du_k[k] * B_k[k], decay, h)

    # 1. chunk end states from a zero start
    h = torch.zeros(batch, M, *A_g.shape, dtype=cdt, device=u.device)
    for k in range(K):
        h = step(h, k)
    chunk_end = h
    chunk_decay = torch.exp(dt_k.sum(0) * A_g)  # b,M,G,c,n

    # 2. carry the state across chunks
    starts = [torch.zeros_like(chunk_end[:, 0])]
    for c in range(M):
        starts.append(torch.addcmul(chunk_end[:, c], chunk_decay[:, c], starts[-1]))
    last_state = starts.pop().reshape(batch, d_inner, A.shape[1])
    h = torch.stack(starts, dim=1)

    # 3. rerun every chunk from its true start, emitting y
    ys = []
    for k in range(K):
        h = step(h, k, decays[k])
        ys.append(torch.matmul(h, C_k[k]))  # b,M,G,c,1
    y = torch.cat(ys, dim=-1).permute(0, 2, 3, 1, 4).reshape(batch, d_inner, M * K)[..., :length]

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


def _scan_no_grad(u, delta, A_g, B, C):
    """Inference: one time step per iteration, three fused ops each, on contiguous time-major
    slices that stay in cache.  Without autograd the blocked scan's second pass (there only to
    keep the graph short) is pure extra arithmetic: this does half of it.  Measured on a 2-core
    CPU, B8 T1000 d512 N16: 0.18 s vs 0.27 s for the plain reference loop (docs/performance.md).
    Memory: the state (b, d, n) and copies of the inputs, never (b, d, l, n).
    delta: after bias and softplus; A_g (G, d/G, n); B, C (b, G, n, l).
    Returns y (b, d, l) and the last state (b, d, n)."""
    batch, d_inner, length = u.shape
    G = A_g.shape[0]

    def time_major(t):  # (b, G*c, l) -> (l, b, G, c, 1)
        return t.view(batch, G, -1, length).permute(3, 0, 1, 2).unsqueeze(-1).contiguous()

    dt_t = time_major(delta)
    du_t = time_major(delta * u)
    B_t = B.permute(3, 0, 1, 2).unsqueeze(-2).contiguous()  # l,b,G,1,n
    C_t = C.permute(3, 0, 1, 2).unsqueeze(-1).contiguous()  # l,b,G,n,1
    y = torch.empty(length, batch, *A_g.shape[:2], 1, dtype=u.dtype, device=u.device)
    h = torch.zeros(batch, *A_g.shape, dtype=u.dtype, device=u.device)
    for t in range(length):
        h = torch.addcmul(du_t[t] * B_t[t], torch.exp(dt_t[t] * A_g), h)  # exp of <= 0
        torch.matmul(h, C_t[t], out=y[t])
    return y.view(length, batch, d_inner).permute(1, 2, 0), h.reshape(batch, d_inner, -1)


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
