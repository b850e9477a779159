"""Mamba (v1) mixer, parameters named and shaped as ``mamba_ssm.modules.mamba_simple.Mamba``.

So a checkpoint moves between this class and mamba-ssm's, and between the CUDA and the PyTorch
backends, with ``strict=True``.  ``forward`` handles a padded batch; ``step`` decodes one token
from a fixed-size state ``(conv_state (b, d_inner, d_conv), ssm_state (b, d_inner, d_state))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from espnet_mamba.modules.mamba_init import inverse_softplus_dt, no_weight_decay, ssm_dtype
from espnet_mamba.modules.padding import MASKED_DT, lengths_to_mask, mask_end
from espnet_mamba.modules.precision import after_in_proj
from espnet_mamba.modules import execution as ex
from espnet_mamba.ops.causal_conv1d import (
    KERNEL_WIDTHS, causal_conv1d, causal_conv1d_step, last_inputs,
)
from espnet_mamba.ops.selective_scan import (
    fused_mamba_inner, fused_mamba_inner_available, selective_scan, selective_state_step,
)


class Mamba(nn.Module):
    # a packed row (modules/packing.py) is unpacked, run padded and packed again: mamba-ssm's
    # v1 selective scan has no ``seq_idx``
    packs_by_padding = True

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank="auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, backend: str | None = None,
                 execution: ex.Execution | None = None):
        """mamba-ssm's options, then how to run (``backend``, or a whole ``execution``:
        modules/execution.py)."""
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.execution = ex.resolve(backend, execution)
        d_inner = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1,
                                bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        else:
            raise ValueError(f"unknown dt_init {dt_init!r}; valid: 'random', 'constant'")
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_dt(d_inner, dt_min, dt_max, dt_init_floor))
        self.dt_proj.bias._no_reinit = True
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_inner))
        no_weight_decay(self.A_log, self.D)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    @property
    def backend(self) -> str:
        return self.execution.backend

    def _conv_weight(self):
        return self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)

    def forward(self, x, lengths=None, mask=None, return_final_state=False, packing=None):
        """x: (batch, length, d_model).  Right padding: give ``lengths``; any contiguous span of
        valid frames (e.g. left padding): give ``mask`` (batch, length), True on valid frames.

        Outputs on valid frames never depend on padded ones; padded outputs are zero.
        With ``return_final_state`` also returns the state after each sequence's last frame.
        ``packing``: x is a packed (1, total, d_model) batch; mamba-ssm's v1 scan cannot reset
        its state inside a sequence, so this runs padded (exact, no speed-up: use mamba2).
        """
        if packing is not None:
            return packing.padded(self.forward, x, packing.lengths)
        # Causal outputs on a right-padded batch are exact without masking the scan, so the fused
        # kernel may run; a final state or another padding needs the masked path below.
        fusable = mask is None and not return_final_state
        if mask is None and lengths is not None:
            mask = lengths_to_mask(lengths, x.shape[1])
        xz = self.in_proj(x).transpose(1, 2)  # (b, 2*d_inner, l)
        return after_in_proj(self._mix, xz, mask, fusable, return_final_state,
                             weight=self.out_proj.weight)

    def _mix(self, xz, mask, fusable, return_final_state):
        """Everything after in_proj (fp32 under fp16 autocast: modules/precision.py)."""
        A, D, dt_bias = self.scan_params()
        if fusable and self.fuses(xz):
            out = fused_mamba_inner(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                    self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias,
                                    A, D, dt_bias)
            return out if mask is None else out * mask[..., None].to(out.dtype)

        conv_in, xs, z, dt, B, C = self.scan_inputs(xz, mask)
        y = selective_scan(xs, dt, A, B.contiguous(), C.contiguous(), D, z=z,
                           delta_bias=dt_bias, delta_softplus=True,
                           return_last_state=return_final_state, backend=self.backend)
        if return_final_state:
            y, ssm_state = y
        out = self.out_proj(y.transpose(1, 2))
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        if not return_final_state:
            return out
        end = mask_end(mask) if mask is not None else torch.full(
            (xz.shape[0],), xz.shape[2], device=xz.device)
        return out, (last_inputs(conv_in, end, self.d_conv), ssm_state)

    def fuses(self, xz) -> bool:
        """Whether a right-padded batch without a final state runs as mamba-ssm's single
        ``mamba_inner_fn`` call (CUDA; it recomputes the conv and dt in backward: less memory).
        Its Python-level forward and backward cost ~1.1 ms and ~2.5 ms of host time per call on
        an H100 (torch.profiler), which bounds training at short lengths; ``fused_kernels:
        false`` calls the same kernels one by one, backward in autograd's engine."""
        return (self.execution.fused_kernels and self.d_conv in KERNEL_WIDTHS
                and fused_mamba_inner_available(self.execution.backend, xz))

    def scan_params(self):
        """(A, D, dt bias) of the selective scan, in fp32."""
        return -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj.bias.float()

    def scan_inputs(self, xz, mask):
        """in_proj's output (b, 2*d_inner, l) -> the selective scan's inputs: the conv's input,
        u = conv output (b, d_inner, l), the gate z, dt before its bias (MASKED_DT on masked
        frames: identity steps), B and C (b, d_state, l)."""
        xs, z = xz.chunk(2, dim=1)
        if mask is not None:  # zero inputs on padded frames: the conv then sees what it would alone
            xs = xs * mask[:, None, :].to(xs.dtype)
        conv_in = xs
        xs = causal_conv1d(xs, self._conv_weight(), self.conv1d.bias, "silu", self.backend)
        dt, B, C = self.x_proj(xs.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, l)
        if mask is not None:
            dt = dt.masked_fill(~mask[:, None, :], MASKED_DT)
        return conv_in, xs, z, dt, B.transpose(1, 2), C.transpose(1, 2)

    def init_state(self, batch: int, device=None, dtype=torch.float32):
        """The zero state: (conv_state, ssm_state)."""
        return (torch.zeros(batch, self.d_inner, self.d_conv, device=device, dtype=dtype),
                torch.zeros(batch, self.d_inner, self.d_state, device=device,
                            dtype=ssm_dtype(dtype)))

    def step(self, x, state):
        """One token.  x: (batch, d_model) -> (y (batch, d_model), new state)."""
        return after_in_proj(self._step_mix, self.in_proj(x), state, weight=self.out_proj.weight)

    def step_chunk(self, x, state):
        """Several tokens from a recurrent state in one pass: what ``step`` gives frame by
        frame, up to rounding.  x: (batch, length >= 1, d_model) -> (y (batch, length,
        d_model), the state after the last token)."""
        return after_in_proj(self._chunk_mix, self.in_proj(x).transpose(1, 2), state,
                             weight=self.out_proj.weight)

    def _chunk_mix(self, xz, state):
        conv_state, ssm_state = state
        xs, z = xz.chunk(2, dim=1)
        # the convolution reads the state's last d_conv - 1 inputs before the chunk
        conv_in = torch.cat([conv_state[:, :, 1:].to(xs.dtype), xs], dim=-1)
        u = causal_conv1d(conv_in, self._conv_weight(), self.conv1d.bias, "silu",
                          self.backend)[..., self.d_conv - 1:]
        dt, B, C = self.x_proj(u.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (b, d_inner, l)
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        A, D, dt_bias = self.scan_params()
        y, last = selective_scan(u, dt, A, B, C, D, z=z, delta_bias=dt_bias,
                                 delta_softplus=True, return_last_state=True,
                                 backend=self.backend)
        # The scan starts from zero (mamba-ssm's v1 scan takes no initial state).  The state
        # is linear in its start: h0 adds exp(A * (delta_1 + ... + delta_t)) * h0 to h_t, so
        # C_t of that to y_t before the gate silu(z_t), the same gate as the rest of y_t.
        cdt = torch.promote_types(u.dtype, torch.float32)
        delta = F.softplus(dt.to(cdt) + dt_bias.to(cdt)[:, None])
        decay = torch.exp(A.to(cdt)[None, :, :, None] * delta.cumsum(-1)[:, :, None, :])
        h0 = ssm_state.to(cdt)
        carried = torch.einsum("bdnl,bdn,bnl->bdl", decay, h0, C.to(cdt))
        y = (y.to(cdt) + carried * F.silu(z.to(cdt))).to(y.dtype)
        last = last.to(cdt) + decay[..., -1] * h0
        return self.out_proj(y.transpose(1, 2)), (
            conv_in[..., -self.d_conv:].to(conv_state.dtype), last.to(ssm_state.dtype))

    def _step_mix(self, xz, state):
        conv_state, ssm_state = state
        xs, z = xz.chunk(2, dim=-1)
        xs, conv_state = causal_conv1d_step(xs, conv_state, self._conv_weight(),
                                            self.conv1d.bias, "silu", self.backend)
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = selective_state_step(ssm_state, xs, dt, A, B, C, self.D.float(), z=z,
                                            dt_bias=self.dt_proj.bias.float(), dt_softplus=True,
                                            backend=self.backend)
        return self.out_proj(y), (conv_state, ssm_state)
