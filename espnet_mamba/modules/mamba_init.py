"""Initialisations shared by the Mamba v1 and v2 mixers (the published recipe of mamba-ssm)."""

from __future__ import annotations

import math

import torch


def inverse_softplus_dt(size: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """A bias b with softplus(b) log-uniform in [dt_min, dt_max] (clamped at ``floor``)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


def no_weight_decay(*params: torch.nn.Parameter) -> None:
    """Mark SSM parameters (A_log, D, dt bias) as mamba-ssm does, for optimisers that look."""
    for p in params:
        p._no_weight_decay = True


def ssm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The SSM state is kept in fp32 (as the kernels do), or fp64 for fp64 models."""
    return torch.float64 if dtype == torch.float64 else torch.float32
