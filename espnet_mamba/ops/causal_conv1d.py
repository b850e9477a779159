"""Causal depthwise conv1d (+ optional SiLU), the short convolution in front of every Mamba scan.

Interface of causal-conv1d's ``causal_conv1d_fn`` / ``causal_conv1d_update``:
    x: (batch, channels, length);  weight: (channels, width);  bias: (channels,)
The PyTorch path is ``F.conv1d`` with width-1 zeros on the left, which is what the kernel computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from espnet_mamba.ops.backend import check_backend, kernel_module, use_kernels

ACTIVATIONS = (None, "silu")
# the widths causal-conv1d's kernels take; others run on the PyTorch path
KERNEL_WIDTHS = (2, 3, 4)


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {ACTIVATIONS}")


def causal_conv1d(x, weight, bias=None, activation=None, backend: str | None = None,
                  seq_idx=None):
    """``seq_idx`` (batch, length) int: no input crosses from one utterance of a packed row to
    the next."""
    _check_activation(activation)
    # the kernel takes seq_idx only in its channel-last layout (x (b, c, l) as a view of a
    # contiguous (b, l, c) tensor), whose strides must be multiples of 8: other channel counts
    # take the PyTorch path below
    kernel_ok = ((seq_idx is None or x.shape[1] % 8 == 0)
                 and weight.shape[-1] in KERNEL_WIDTHS)
    if kernel_ok and use_kernels(backend, "causal_conv1d", x, weight):
        fn = kernel_module("causal_conv1d").causal_conv1d_fn
        if seq_idx is None:
            return fn(x.contiguous(), weight, bias, activation=activation)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
        return fn(x, weight, bias, seq_idx=seq_idx.to(torch.int32).contiguous(),
                  activation=activation)
    width = weight.shape[-1]
    if seq_idx is not None:
        return _packed_conv(x, weight, bias, activation, seq_idx)
    y = F.conv1d(F.pad(x, (width - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(y) if activation == "silu" else y


def _packed_conv(x, weight, bias, activation, seq_idx):
    """The PyTorch path with ``seq_idx``: tap k of output t reads input t - (width-1) + k only
    if both belong to the same utterance (as the kernel does)."""
    width, length = weight.shape[-1], x.shape[-1]
    weight = weight.to(x.dtype)  # as F.conv1d would require (no silent upcast)
    bias = None if bias is None else bias.to(x.dtype)
    xp = F.pad(x, (width - 1, 0))
    sp = F.pad(seq_idx, (width - 1, 0), value=-1)
    y = torch.zeros_like(x) if bias is None else bias[None, :, None].expand_as(x)
    for k in range(width):
        same = (sp[:, k:k + length] == seq_idx)[:, None, :].to(x.dtype)
        y = y + weight[None, :, k, None] * xp[:, :, k:k + length] * same
    return F.silu(y) if activation == "silu" else y


def causal_conv1d_step(x, conv_state, weight, bias=None, activation=None,
                       backend: str | None = None):
    """One step.  x: (batch, channels); conv_state: (batch, channels, width), the last inputs.

    Returns (y, new_conv_state); the given state is left unchanged (beam search reuses it).
    """
    _check_activation(activation)
    # One step is width multiply-adds per channel: in 'auto' mode the few elementwise ops below
    # cost less host time than the kernel's call (~85 us measured on an H100) plus a clone.
    if (check_backend(backend) != "auto" and weight.shape[-1] in KERNEL_WIDTHS
            and use_kernels(backend, "causal_conv1d", x, conv_state)):
        new_state = conv_state.clone()  # the kernel rolls the state in place
        fn = kernel_module("causal_conv1d").causal_conv1d_update
        # the kernel wants x in the state's dtype (autocast may give bf16 x, fp32 state)
        y = fn(x.to(new_state.dtype), new_state, weight, bias, activation=activation)
        return y.to(x.dtype), new_state
    new_state = torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    y = (new_state * weight).sum(-1)
    if bias is not None:
        y = y + bias
    y = y.to(x.dtype)
    return (F.silu(y) if activation == "silu" else y), new_state


def last_inputs(x, end, width):
    """The conv state after position ``end - 1``: inputs end-width..end-1, zeros before 0.

    x: (batch, channels, length) with zeros on padded frames; end: (batch,) int.
    """
    idx = end[:, None] - width + torch.arange(width, device=x.device)[None, :]  # (b, width)
    valid = idx >= 0
    gathered = torch.gather(x, 2, idx.clamp(min=0)[:, None, :].expand(-1, x.shape[1], -1))
    return gathered * valid[:, None, :].to(x.dtype)
