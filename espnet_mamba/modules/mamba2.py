"""Mamba2 mixer, parameters named and shaped as ``mamba_ssm.modules.mamba2.Mamba2``
(with d_ssm = d_inner, i.e. no extra MLP channels).

State for ``step``: ``(conv_state (b, conv_dim, d_conv), ssm_state (b, nheads, headdim, d_state))``
with conv_dim = d_inner + 2 * ngroups * d_state.
"""

from __future__ import annotations

import torch
from torch import nn

from espnet_mamba.modules.mamba_init import inverse_softplus_dt, no_weight_decay, ssm_dtype
from espnet_mamba.modules.padding import MASKED_DT, lengths_to_mask, mask_end
from espnet_mamba.modules.precision import after_in_proj
from espnet_mamba.modules import execution as ex
from espnet_mamba.ops.causal_conv1d import (
    KERNEL_WIDTHS, causal_conv1d, causal_conv1d_step, last_inputs,
)
from espnet_mamba.ops.rms_norm import gated_rms_norm
from espnet_mamba.ops.ssd import (
    fused_mamba2_available, fused_mamba2_split_scan, ssd_scan, ssd_step,
)


class GatedRMSNorm(nn.Module):
    """Holds the ``norm.weight`` of Mamba2 (mamba-ssm's layernorm_gated.RMSNorm)."""

    def __init__(self, d: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps, self.group_size = eps, group_size

    def forward(self, x, z, backend=None):
        return gated_rms_norm(x, z, self.weight, self.eps, self.group_size, backend)


class Mamba2(nn.Module):
    def __init__(self, d_model: int, d_state: int = 128, d_conv: int = 4, expand: float = 2,
                 headdim: int = 64, ngroups: int = 1, A_init_range=(1, 16),
                 dt_min: float = 0.001, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 bias: bool = False, conv_bias: bool = True, chunk_size: int = 256,
                 backend: str | None = None, execution: ex.Execution | None = None):
        """mamba-ssm's options, then how to run (``backend``, or a whole ``execution``:
        modules/execution.py)."""
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        if self.d_inner % headdim:
            raise ValueError(f"Mamba2: d_inner = expand * d_model = {self.d_inner} must be a "
                             f"multiple of headdim = {headdim}")
        self.headdim, self.nheads = headdim, self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"Mamba2: nheads = {self.nheads} must be a multiple of "
                             f"ngroups = {ngroups}")
        self.ngroups, self.chunk_size = ngroups, chunk_size
        self.execution = ex.resolve(backend, execution)
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.nheads, dt_min, dt_max,
                                                        dt_init_floor))
        lo, hi = A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"Mamba2: need 0 < A_init_range[0] <= A_init_range[1], got "
                             f"{A_init_range}")
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(lo, hi)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        no_weight_decay(self.dt_bias, self.A_log, self.D)
        self.norm = GatedRMSNorm(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    @property
    def backend(self) -> str:
        return self.execution.backend

    @property
    def packs_by_padding(self) -> bool:
        """A packed row is unpacked (``packed_mixer: padded``), as Mamba v1 and attention do."""
        return self.execution.packed_mixer == "padded"

    def _fuses(self, x) -> bool:
        """Whether the mixer runs as mamba-ssm's one fused call (CUDA, a width its conv kernel
        takes, ``fused_kernels`` on)."""
        return (self.execution.fused_kernels and self.d_conv in KERNEL_WIDTHS
                and fused_mamba2_available(self.backend, x))

    def _split(self, zxbcdt):
        return zxbcdt.split([self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xbc):
        gn = self.ngroups * self.d_state
        return xbc.split([self.d_inner, gn, gn], dim=-1)

    def forward(self, x, lengths=None, mask=None, return_final_state=False, packing=None):
        """Same contract as :meth:`espnet_mamba.modules.mamba.Mamba.forward`.

        ``packing`` (:class:`~espnet_mamba.modules.packing.Packing`): x is (1, total, d_model),
        utterances end to end; the convolution and the scan reset at each start (``seq_idx``,
        see :meth:`_forward_packed`).
        """
        if packing is not None:
            return self._forward_packed(x, packing)
        fusable = mask is None and not return_final_state
        if mask is None and lengths is not None:
            mask = lengths_to_mask(lengths, x.shape[1])
        return after_in_proj(self._mix, self.in_proj(x), mask, fusable, return_final_state,
                             weight=self.out_proj.weight)

    def _mix(self, zxbcdt, mask, fusable, return_final_state, seq_idx=None):
        """Everything after in_proj (fp32 under fp16 autocast: modules/precision.py).

        ``seq_idx`` (1, length): a packed row; no state crosses from one utterance to the
        next."""
        batch, length, _ = zxbcdt.shape
        A = -torch.exp(self.A_log.float())
        fused = self._fuses(zxbcdt)
        if fusable and fused:
            out = fused_mamba2_split_scan(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, A,
                self.D, self.chunk_size, self.norm.weight, self.norm.eps, self.out_proj.weight,
                self.out_proj.bias, self.headdim, self.ngroups, seq_idx=seq_idx)
            return out if mask is None else out * mask[..., None].to(out.dtype)

        z, xbc, dt = self._split(zxbcdt)
        if mask is not None:
            xbc = xbc * mask[..., None].to(xbc.dtype)
            dt = dt.masked_fill(~mask[..., None], MASKED_DT)
        conv_in = xbc.transpose(1, 2)
        xbc = causal_conv1d(conv_in, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu",
                            self.backend, seq_idx=seq_idx).transpose(1, 2)
        xs, B, C = self._split_xbc(xbc)
        y = ssd_scan(xs.reshape(batch, length, self.nheads, self.headdim), dt, A,
                     B.reshape(batch, length, self.ngroups, self.d_state),
                     C.reshape(batch, length, self.ngroups, self.d_state),
                     self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                     return_final_states=return_final_state, seq_idx=seq_idx,
                     backend=self.backend)
        if return_final_state:
            y, ssm_state = y
        y = self.norm(y.reshape(batch, length, self.d_inner), z, self.backend)
        out = self.out_proj(y)
        if mask is not None:
            out = out * mask[..., None].to(out.dtype)
        if not return_final_state:
            return out
        end = mask_end(mask) if mask is not None else torch.full(
            (batch,), length, device=zxbcdt.device)
        return out, (last_inputs(conv_in, end, self.d_conv), ssm_state)

    def _forward_packed(self, x, packing):
        """The execution option ``packed_mixer`` picks how a packed row runs:
          ``fused``:   mamba-ssm's fused mixer with ``seq_idx`` where it is available, else
                       ``unfused``;
          ``unfused``: the convolution and the chunk scan, each with ``seq_idx`` (CUDA kernels
                       or the PyTorch path), then the gated norm;
          ``padded``:  unpack, run the padded batch, pack again (no speed-up; for comparisons).
        On an H100 (mamba-ssm 2.3.2.post1, causal-conv1d 1.7.0) each seq_idx kernel and the
        whole mixer equal each utterance run alone (< 1e-5, fp32), and a packed encoder's
        outputs and gradients equal the padded one's
        (tests/gpu/test_models_cuda.py::test_packed_encoder_cuda)."""
        path = self.execution.packed_mixer
        if path == "padded":
            return packing.padded(self.forward, x, packing.lengths)
        # mamba-ssm's fused mixer hands causal-conv1d a channel-last view of in_proj's output
        # only if its width and the conv's channels are multiples of 8; otherwise it makes the
        # view contiguous, and the kernel refuses seq_idx: those widths run unfused
        aligned = self.in_proj.out_features % 8 == 0 and self.conv_dim % 8 == 0
        fused = path == "fused" and aligned and self._fuses(x)
        return after_in_proj(self._mix, self.in_proj(x), None, fused, False,
                             weight=self.out_proj.weight, seq_idx=packing.seq_idx)

    def init_state(self, batch: int, device=None, dtype=torch.float32):
        return (torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
                torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device,
                            dtype=ssm_dtype(dtype)))

    def step(self, x, state):
        """One token.  x: (batch, d_model) -> (y (batch, d_model), new state)."""
        return after_in_proj(self._step_mix, self.in_proj(x), state, weight=self.out_proj.weight)

    def step_chunk(self, x, state):
        """Several tokens from a recurrent state in one pass: what ``step`` gives frame by
        frame, up to rounding.  x: (batch, length >= 1, d_model) -> (y (batch, length,
        d_model), the state after the last token)."""
        return after_in_proj(self._chunk_mix, self.in_proj(x), state,
                             weight=self.out_proj.weight)

    def _chunk_mix(self, zxbcdt, state):
        conv_state, ssm_state = state
        batch, length, _ = zxbcdt.shape
        z, xbc, dt = self._split(zxbcdt)
        # the convolution reads the state's last d_conv - 1 inputs before the chunk
        conv_in = torch.cat([conv_state[:, :, 1:].to(xbc.dtype), xbc.transpose(1, 2)], dim=-1)
        xbc = causal_conv1d(conv_in, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu",
                            self.backend)[..., self.d_conv - 1:].transpose(1, 2)
        xs, B, C = self._split_xbc(xbc)
        y, last = ssd_scan(xs.reshape(batch, length, self.nheads, self.headdim), dt,
                           -torch.exp(self.A_log.float()),
                           B.reshape(batch, length, self.ngroups, self.d_state),
                           C.reshape(batch, length, self.ngroups, self.d_state),
                           self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
                           initial_states=ssm_state, return_final_states=True,
                           backend=self.backend)
        y = self.norm(y.reshape(batch, length, self.d_inner), z, self.backend)
        return self.out_proj(y), (conv_in[..., -self.d_conv:].to(conv_state.dtype),
                                  last.to(ssm_state.dtype))

    def _step_mix(self, zxbcdt, state):
        conv_state, ssm_state = state
        batch = zxbcdt.shape[0]
        z, xbc, dt = self._split(zxbcdt)
        xbc, conv_state = causal_conv1d_step(xbc, conv_state, self.conv1d.weight.squeeze(1),
                                             self.conv1d.bias, "silu", self.backend)
        xs, B, C = self._split_xbc(xbc)
        A = -torch.exp(self.A_log.float())
        y, ssm_state = ssd_step(ssm_state, xs.reshape(batch, self.nheads, self.headdim), dt, A,
                                B.reshape(batch, self.ngroups, self.d_state),
                                C.reshape(batch, self.ngroups, self.d_state), D=self.D,
                                dt_bias=self.dt_bias, dt_softplus=True, backend=self.backend)
        y = self.norm(y.reshape(batch, self.d_inner), z, self.backend)
        return self.out_proj(y), (conv_state, ssm_state)
