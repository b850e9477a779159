"""ESPnet's ``make_pad_mask`` in O(batch x frames) memory instead of O(frames^2).

For 2-D/3-D inputs ESPnet 202611 builds every mask from a (frames+1, frames+1) triangular matrix
(``_make_pad_mask_traceable``, written so that ONNX export can trace it).  That is harmless for
an utterance of seconds, but ``LogMel``, ``GlobalMVN`` and ``UtteranceMVN`` call it on every
input: a 20-minute recording (120k frames) needs three 14 GB bool matrices before any model
runs, and decoding it through ``Speech2Text`` on a 24 GiB machine is killed in the front-end.

:func:`patch` (run when ESPnet imports ``nets_utils``, before any module binds the name)
replaces the module's function by one that returns the same mask from a broadcast comparison.
While tracing or exporting to ONNX it calls ESPnet's own function, so exports are unchanged.
``ESPNET_MAMBA_DISABLE_HOOK=1`` (no hook at all) keeps ESPnet's function.
"""

from __future__ import annotations

import functools

import torch


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def linear_pad_mask(lengths, xs=None, length_dim=-1, maxlen=None):
    """True on padded positions; the same values and shape as ESPnet's traceable variant."""
    if xs is not None and xs.dim() == 3:
        # one length per row of the non-length axes, as ESPnet expands them
        lengths = lengths[:, None].expand(xs.shape[0], xs.shape[2 if length_dim == 1 else 1])
    if maxlen is not None:
        assert xs is None and maxlen >= int(lengths.max())  # as ESPnet asserts
    elif xs is not None:
        maxlen = xs.shape[length_dim]
    else:
        maxlen = int(lengths.max())
    device = lengths.device if xs is None else xs.device
    lengths = torch.clamp(lengths, max=maxlen).long().to(device)
    mask = torch.arange(maxlen, device=device) >= lengths[..., None]
    if xs is not None and xs.dim() == 3 and length_dim == 1:
        return mask.transpose(1, 2)
    return mask


def _wraps_traceable_case(lengths, xs, length_dim) -> bool:
    """The inputs for which ESPnet takes its O(frames^2) path (and we take ours)."""
    return ((xs is None or xs.dim() in (2, 3)) and length_dim in (-1, 1, 2)
            and isinstance(lengths, torch.Tensor) and lengths.dim() == 1
            and not (xs is not None and xs.dim() == 2 and length_dim == 2))


def patch(module) -> bool:
    """Replace ``module.make_pad_mask`` (idempotent).  Returns True if it was replaced."""
    original = getattr(module, "make_pad_mask", None)
    if original is None or getattr(original, "_espnet_mamba_linear", False):
        return False

    @functools.wraps(original)
    def make_pad_mask(lengths, xs=None, length_dim=-1, maxlen=None):
        if _tracing() or not _wraps_traceable_case(lengths, xs, length_dim):
            return original(lengths, xs, length_dim, maxlen)
        return linear_pad_mask(lengths, xs, length_dim, maxlen)

    make_pad_mask._espnet_mamba_linear = True
    make_pad_mask._espnet_original = original
    # ESPnet's global, replaced: its O(frames^2) masks kill a 20-minute decode in the front-end
    module.make_pad_mask = make_pad_mask
    return True
