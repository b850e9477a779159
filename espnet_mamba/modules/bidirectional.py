"""Bidirectional mixer: one mixer reads the sequence forwards, a second one backwards.

The backward mixer reads each utterance reversed within its own length (not the padded tensor),
so an utterance gives the same output alone and inside a padded batch.  The two outputs are
summed (the residual stream keeps its width).

Two Mamba (v1) mixers can share one selective scan: their channels side by side, each
direction's B and C as one group of mamba-ssm's grouped layout.  Same arithmetic, half the
scan calls: on the PyTorch path half the Python steps over time (the CPU cost), on CUDA one
kernel call instead of two.  The execution option ``merge_directions`` (modules/execution.py):
``auto`` merges wherever mamba-ssm's fused ``mamba_inner_fn`` would not be used (no kernels: the
PyTorch path; or ``fused_kernels: false``); ``always`` also where it would (the kernels one by
one: benchmarks/encoder_gpu.py's ``samba_asr_merged`` variant measures it); ``never`` never.
"""

from __future__ import annotations

import torch
from torch import nn

from espnet_mamba.modules import mamba as mamba_v1
from espnet_mamba.modules.padding import lengths_to_mask, reverse_padded
from espnet_mamba.modules.precision import after_in_proj
from espnet_mamba.ops.selective_scan import selective_scan


class Bidirectional(nn.Module):
    def __init__(self, forward_mixer: nn.Module, backward_mixer: nn.Module):
        super().__init__()
        self.forward_mixer = forward_mixer
        self.backward_mixer = backward_mixer

    def forward(self, x, lengths=None, packing=None):
        if packing is not None:  # x: (1, total, d), utterances end to end
            y = self.forward_mixer(x, packing=packing)
            x_rev = packing.reverse(x)
            return y + packing.reverse(self.backward_mixer(x_rev, packing=packing))
        if self._merge(x):
            return self._merged(x, lengths)
        y = self.forward_mixer(x, lengths)
        x_rev = reverse_padded(x, lengths)
        return y + reverse_padded(self.backward_mixer(x_rev, lengths), lengths)

    def _merge(self, x) -> bool:
        f, b = self.forward_mixer, self.backward_mixer
        if not (isinstance(f, mamba_v1.Mamba) and isinstance(b, mamba_v1.Mamba)):
            return False
        mode = f.execution.merge_directions
        if mode == "auto":
            return not f.fuses(x)
        return mode == "always"

    def _merged(self, x, lengths):
        f, b = self.forward_mixer, self.backward_mixer
        mask = None if lengths is None else lengths_to_mask(lengths, x.shape[1])
        xz_f = f.in_proj(x).transpose(1, 2)  # (b, 2*d_inner, l)
        xz_b = b.in_proj(reverse_padded(x, lengths)).transpose(1, 2)
        return after_in_proj(self._merged_mix, xz_f, xz_b, mask, lengths,
                             weight=f.out_proj.weight)

    def _merged_mix(self, xz_f, xz_b, mask, lengths):
        """Both directions' scans as one (channels [forward; backward], B/C as 2 groups)."""
        f, b = self.forward_mixer, self.backward_mixer
        ins = [m.scan_inputs(xz, mask) for m, xz in ((f, xz_f), (b, xz_b))]
        params = [m.scan_params() for m in (f, b)]
        u, z, dt = (torch.cat([ins[0][i], ins[1][i]], dim=1) for i in (1, 2, 3))
        B, C = (torch.stack([ins[0][i], ins[1][i]], dim=1) for i in (4, 5))  # (b, 2, n, l)
        A, D, dt_bias = (torch.cat([params[0][i], params[1][i]]) for i in range(3))
        y = selective_scan(u, dt, A, B, C, D, z=z, delta_bias=dt_bias, delta_softplus=True,
                           backend=f.backend)
        y_f, y_b = y.transpose(1, 2).chunk(2, dim=-1)
        out = f.out_proj(y_f) + reverse_padded(b.out_proj(y_b), lengths)
        return out if mask is None else out * mask[..., None].to(out.dtype)
