"""RMSNorm, plain and gated, with the triton kernels of mamba-ssm as the CUDA path.

``add_rms_norm(pending, residual, weight)`` fuses the residual add (and the dropout of the
sub-layer output being added) of a pre-norm block into the norm: one kernel on GPU.
``gated_rms_norm(x, z, weight)`` is Mamba2's output norm: norm(x * silu(z)) * weight, per group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from espnet_mamba.ops.backend import check_backend, kernel_module, use_kernels


# The default of ``kernel_min_numel``: in 'auto' mode the triton kernels serve inputs of at least
# this many elements.  Below it (decoding steps: a few hypotheses x d_model) a call's host-side
# cost (~220 us per triton call measured on an H100 vs ~2 us of GPU work) dominates, and torch's
# rms_norm is cheaper.  Modules pass their execution option (modules/execution.py).
KERNEL_MIN_NUMEL = 1 << 16


def _use_triton(backend, kernel_min_numel, x, *tensors):
    if check_backend(backend) == "auto" and x.numel() < kernel_min_numel:
        return False
    return use_kernels(backend, "rms_norm", x, *tensors)


def _rms(x, weight, eps):
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return F.rms_norm(xf, (x.shape[-1],), weight.to(xf.dtype), eps).to(x.dtype)


def rms_norm(x, weight, eps=1e-5, backend: str | None = None,
             kernel_min_numel: int = KERNEL_MIN_NUMEL):
    """norm(x) * weight."""
    if _use_triton(backend, kernel_min_numel, x, weight):
        return kernel_module("rms_norm").rms_norm_fn(x, weight, None, eps=eps)
    return _rms(x, weight, eps)


def add_rms_norm(pending, residual, weight, eps=1e-5, dropout_p=0.0,
                 backend: str | None = None, kernel_min_numel: int = KERNEL_MIN_NUMEL):
    """The residual add of a pre-norm stack fused with the next norm.

    new_residual = residual + dropout(pending) (just ``pending`` if residual is None);
    returns (norm(new_residual) * weight, new_residual).  On CUDA one triton kernel does the
    dropout, the add and the norm (and one their backward), instead of three kernels each way.

    The residual is kept in fp32 when ``pending`` is half precision (mamba-ssm's
    ``residual_in_fp32``): the running sum of every layer's output is what leaves fp16's range
    first and what bf16 rounds most.  The normalised output has ``pending``'s dtype.
    """
    if _use_triton(backend, kernel_min_numel, pending, weight):
        fn = kernel_module("rms_norm").rms_norm_fn
        return fn(pending, weight, None, residual=residual, eps=eps, dropout_p=dropout_p,
                  prenorm=True, residual_in_fp32=True)
    new = F.dropout(pending, dropout_p) if dropout_p else pending
    if residual is None and new.dtype in (torch.float16, torch.bfloat16):
        new = new.float()
    new = new if residual is None else residual + new
    return _rms(new, weight, eps).to(pending.dtype), new


def gated_rms_norm(x, z, weight, eps=1e-5, group_size=None, backend: str | None = None):
    """norm(x * silu(z)) * weight with the RMS taken per group of ``group_size`` channels."""
    if use_kernels(backend, "gated_rms_norm", x, z, weight):
        fn = kernel_module("gated_rms_norm").rmsnorm_fn
        return fn(x, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=False)
    dtype = x.dtype
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    h = x.to(cdt) * F.silu(z.to(cdt))
    group = group_size or h.shape[-1]
    hg = h.unflatten(-1, (h.shape[-1] // group, group))
    hg = hg * torch.rsqrt(hg.pow(2).mean(-1, keepdim=True) + eps)
    return (hg.flatten(-2) * weight.to(cdt)).to(dtype)
