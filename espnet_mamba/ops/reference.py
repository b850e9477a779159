"""Plain sequential recurrences, one time step per Python iteration (the per-step loop of
mamba-ssm's reference style): the ground truth the fast paths are tested against (in float64)
and the baseline of benchmarks/scan_cpu.py.  Not used by the models."""

import torch
import torch.nn.functional as F


def selective_scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                        delta_softplus=False):
    """Mamba v1: u, delta, z (b, d, l); A (d, n); B, C (b, n, l). Returns y, last state."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h \
            + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y, h


def ssd_loop(x, dt, A, B, C, D=None, initial_state=None):
    """Mamba2: x (b, l, h, p); dt (b, l, h) after softplus; A (h,); B, C (b, l, g, n)."""
    b, l, h, p = x.shape
    rep = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(rep, 2), C.repeat_interleave(rep, 2)
    state = x.new_zeros(b, h, p, B.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * D[:, None]
    return y, state
