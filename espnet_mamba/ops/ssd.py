"""State-space duality (SSD) scan of Mamba2: one scalar decay per head.

Interface of mamba-ssm's ``mamba_chunk_scan_combined``:
    x: (batch, length, heads, headdim);  dt: (batch, length, heads);  A: (heads,)
    B, C: (batch, length, groups, d_state);  D: (heads,) or (heads, headdim);  z like x
    initial_states / final states: (batch, heads, headdim, d_state), fp32
The PyTorch path is the chunked SSD form: inside a chunk of K steps the output is a masked
(K x K) matrix product whose decays exp(cumsum_t - cumsum_s) are only formed for s <= t (never
overflow); chunk states are carried by a short loop over chunks.  Memory is O(length * K) per head.

Frames with dt = 0 leave the state unchanged: that is how padding is made exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from espnet_mamba.ops.backend import fp32_scan, kernel_module, use_kernels

TORCH_CHUNK = 64


def _prep_dt(dt, dt_bias, dt_softplus, cdt):
    dt = dt.to(cdt)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cdt)
    return F.softplus(dt) if dt_softplus else dt


def _skip(y, x, D, z, cdt):
    if D is not None:
        Dx = D.to(cdt)[:, None] if D.dim() == 1 else D.to(cdt)
        y = y + x.to(cdt) * Dx
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y


@fp32_scan
def ssd_scan_torch(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None,
                   initial_states=None, dt_softplus=False, return_final_states=False,
                   seq_idx=None, recompute: bool | None = None):
    """``recompute`` (default: whenever autograd records): keep only the inputs for backward and
    rebuild the chunk products there.  Those products are (batch, heads, length, chunk) tensors,
    several of them per call, kept for every layer until backward: recomputing them costs one
    more forward of this function and bounds training memory by the inputs' size, O(batch x
    length x d_inner).  The results are the same either way."""
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus,
            return_final_states, seq_idx)
    if recompute is None:
        recompute = torch.is_grad_enabled() and any(
            t.requires_grad for t in args if isinstance(t, torch.Tensor))
    if recompute:
        return torch.utils.checkpoint.checkpoint(_ssd_scan, *args, use_reentrant=False)
    return _ssd_scan(*args)


def _ssd_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus,
              return_final_states, seq_idx):
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    batch, length, heads, headdim = x.shape
    groups = B.shape[2]
    dt = _prep_dt(dt, dt_bias, dt_softplus, cdt)
    xs, Bs, Cs = x.to(cdt), B.to(cdt), C.to(cdt)
    K = min(chunk_size, max(length, 1))
    M = -(-length // K)
    pad = M * K - length
    if pad:  # dt = 0 tail: identity steps
        xs, Bs, Cs = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xs, Bs, Cs))
        dt = F.pad(dt, (0, 0, 0, pad))
    # seq_idx (packed rows): which utterance each step belongs to; no state crosses a change.
    # Without it every step belongs to utterance 0.  The tail repeats the last step's.
    if seq_idx is None:
        seq = torch.zeros(batch, M * K, dtype=torch.long, device=x.device)
    else:
        seq = torch.cat([seq_idx.long(), seq_idx[:, -1:].long().expand(-1, pad)], 1)
    seq = seq.view(batch, M, K)
    last = seq[..., -1]  # (b, M): the utterance a chunk's end state belongs to
    prev = torch.cat([seq[:, :1, 0], last[:, :-1]], 1)  # the state a chunk starts from
    rep = heads // groups
    Bs = Bs.repeat_interleave(rep, dim=2).view(batch, M, K, heads, -1)
    Cs = Cs.repeat_interleave(rep, dim=2).view(batch, M, K, heads, -1)
    xs = xs.view(batch, M, K, heads, headdim)
    dt = dt.view(batch, M, K, heads).permute(0, 3, 1, 2)  # b,h,M,K
    cum = torch.cumsum(dt * A.to(cdt)[None, :, None, None], dim=-1)  # b,h,M,K, non-increasing

    # inside each chunk: y_t = sum_{s<=t} (C_t . B_s) exp(cum_t - cum_s) dt_s x_s
    causal = torch.ones(K, K, dtype=torch.bool, device=x.device).tril()
    same = seq[..., :, None] == seq[..., None, :]  # b,M,K,K
    seg = (cum[..., :, None] - cum[..., None, :]).masked_fill(~(causal & same[:, None]),
                                                             float("-inf"))
    weights = torch.einsum("bmthn,bmshn->bhmts", Cs, Bs) * torch.exp(seg) * dt[..., None, :]
    y = torch.einsum("bhmts,bmshp->bmthp", weights, xs)

    # chunk end states (zero start), then carry them across chunks
    to_end = torch.exp(cum[..., -1:] - cum) * dt * (seq == last[..., None])[:, None]  # b,h,M,K
    chunk_end = torch.einsum("bmshn,bhms,bmshp->bmhpn", Bs, to_end, xs)
    # a chunk whose end belongs to another utterance than the previous end starts from zero
    chunk_decay = torch.exp(cum[..., -1]) * (last == prev)[:, None]  # b,h,M
    state = (torch.zeros(batch, heads, headdim, Bs.shape[-1], dtype=cdt, device=x.device)
             if initial_states is None else initial_states.to(cdt))
    starts = []
    for c in range(M):
        starts.append(state)
        state = chunk_decay[:, :, c, None, None] * state + chunk_end[:, c]
    starts = torch.stack(starts, dim=1)  # b,M,h,p,n
    carried = torch.exp(cum) * (seq == prev[..., None])[:, None]  # b,h,M,K
    y = y + torch.einsum("bmthn,bmhpn,bhmt->bmthp", Cs, starts, carried)

    y = y.reshape(batch, M * K, heads, headdim)[:, :length]
    y = _skip(y, x, D, z, cdt).to(x.dtype)
    return (y, state) if return_final_states else y


def ssd_scan(x, dt, A, B, C, chunk_size=64, D=None, z=None, dt_bias=None, initial_states=None,
             dt_softplus=False, return_final_states=False, seq_idx=None,
             backend: str | None = None):
    """Dispatch to mamba-ssm's ``mamba_chunk_scan_combined`` or :func:`ssd_scan_torch`."""
    if use_kernels(backend, "ssd", x, dt, B, C):
        fn = kernel_module("ssd").mamba_chunk_scan_combined
        seq_idx = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
        return fn(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                  initial_states=initial_states, seq_idx=seq_idx, dt_softplus=dt_softplus,
                  return_final_states=return_final_states)
    # The chunk only trades memory for speed here (results are the same): 64 suits CPUs.
    return ssd_scan_torch(x, dt, A, B, C, TORCH_CHUNK, D=D, z=z, dt_bias=dt_bias,
                          initial_states=initial_states, dt_softplus=dt_softplus,
                          return_final_states=return_final_states, seq_idx=seq_idx)


def ssd_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
             backend: str | None = None):
    """One step.  state: (b, h, p, n); x, z: (b, h, p); dt: (b, h); B, C: (b, g, n).

    Returns (y, new_state) without touching ``state``.
    """
    heads, headdim, d_state = state.shape[1:]
    if use_kernels(backend, "selective_state_update", state, x):
        new_state = state.clone()  # the triton kernel updates in place
        fn = kernel_module("selective_state_update").selective_state_update
        A_ = A.float()[:, None, None].expand(heads, headdim, d_state)
        dt_ = dt[:, :, None].expand(-1, -1, headdim)
        bias_ = None if dt_bias is None else dt_bias[:, None].expand(heads, headdim)
        D_ = None if D is None else (D[:, None].expand(heads, headdim) if D.dim() == 1 else D)
        y = fn(new_state, x, dt_, A_, B, C, D=D_, z=z, dt_bias=bias_, dt_softplus=dt_softplus)
        return y, new_state
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    dt = _prep_dt(dt, dt_bias, dt_softplus, cdt)
    rep = heads // B.shape[1]
    Bh = B.to(cdt).repeat_interleave(rep, dim=1)  # b,h,n
    Ch = C.to(cdt).repeat_interleave(rep, dim=1)
    decay = torch.exp(dt * A.to(cdt))[..., None, None]
    new_state = decay * state.to(cdt) + (dt[..., None] * x.to(cdt))[..., None] * Bh[:, :, None]
    y = (new_state @ Ch[..., None]).squeeze(-1)
    return _skip(y, x, D, z, cdt).to(x.dtype), new_state.to(state.dtype)


def fused_mamba2_available(backend: str | None, *tensors) -> bool:
    """True if the whole Mamba2 mixer can run as ``mamba_split_conv1d_scan_combined``."""
    return use_kernels(backend, "ssd", *tensors) and kernel_module("causal_conv1d") is not None


def fused_mamba2_split_scan(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, chunk_size,
                            norm_weight, norm_eps, out_proj_weight, out_proj_bias, headdim,
                            ngroups, seq_idx=None):
    """mamba-ssm's fused Mamba2 mixer (conv, scan, gated norm, out_proj): (b, l, d_model)."""
    fn = kernel_module("ssd").mamba_split_conv1d_scan_combined
    seq_idx = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    return fn(zxbcdt, conv_weight, conv_bias, dt_bias, A, D, chunk_size, seq_idx=seq_idx,
              activation="silu", rmsnorm_weight=norm_weight, rmsnorm_eps=norm_eps,
              outproj_weight=out_proj_weight, outproj_bias=out_proj_bias, headdim=headdim,
              ngroups=ngroups, norm_before_gate=False)
