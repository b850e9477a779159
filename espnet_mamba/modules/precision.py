"""Mixed-precision policy of the mixers: under fp16 autocast the recurrence runs in fp32.

Why: fp16 ends at 65504.  A selective scan sums its inputs over as many steps as the state
remembers (about 1 / (dt |A|): thousands of frames for a small dt), so its output can leave
fp16's range while every input is small.  Without this policy, on an H200, samba_asr's
speech-summary mixer returned inf from step ~49 of fp16 training on inputs of |x| < 3, and
ESPnet then skipped every step; bf16 (fp32's range) was clean for 2,000 steps
(docs/reliability.md).  Autocast keeps ops of that kind (cumsum, exp, softmax) in fp32; the
mixers here do the same for everything after their input projection when autocast's dtype is
fp16: ``in_proj`` (the largest matmul) stays fp16, the convolution, the scan and the output
projection run in fp32 and return fp32.  bf16 autocast and no autocast are untouched.
"""

from __future__ import annotations

import torch


def fp16_autocast(t: torch.Tensor) -> bool:
    """Is autocast on for ``t``'s device with fp16 as its dtype?"""
    dev = t.device.type
    return torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.float16


def after_in_proj(fn, projected: torch.Tensor, *args, weight: torch.Tensor, **kwargs):
    """``fn(projected, *args)``, the part of a mixer after its input projection, in fp32 when
    fp16 autocast is on (see the module docstring); as is otherwise.  Every floating-point
    tensor among ``projected, *args`` is cast (e.g. both directions' projections).  ``weight``:
    one of the mixer's weights; if the model itself was cast to half precision there are no
    fp32 weights to compute with, and the policy does not apply."""
    if not fp16_autocast(projected) or weight.dtype != torch.float32:
        return fn(projected, *args, **kwargs)
    args = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in (projected, *args)]
    with torch.autocast(projected.device.type, enabled=False):
        return fn(*args, **kwargs)
