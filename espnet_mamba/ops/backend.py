"""One switch that decides where the Mamba ops run: CUDA kernels or plain PyTorch.

``auto``  use the kernels of mamba-ssm / causal-conv1d when they import and the tensors are on
          CUDA, else PyTorch (the only choice on a CPU-only machine);
``torch`` always the PyTorch path (any device; the reference the kernels are tested against);
``cuda``  the kernels for CUDA tensors, a clear error if they are not installed; on CPU tensors
          the PyTorch path, with a one-time warning: a model trained with ``backend: cuda`` is
          only weights, and decoding it on a CPU (asr_inference --device cpu) is the user's
          choice at run time.

The default comes from ``ESPNET_MAMBA_BACKEND`` (else ``auto``); modules take a ``backend`` argument
that overrides it.  The kernels are imported lazily so that ``import espnet_mamba`` never needs
CUDA, triton or mamba-ssm.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os

BACKENDS = ("auto", "torch", "cuda")
ENV_VAR = "ESPNET_MAMBA_BACKEND"

INSTALL_HINT = (
    "install the optional CUDA kernels with `bash tools/build_kernels.sh` (or "
    "`pip install espnet-mamba[cuda]` with build isolation off, see README), "
    "or use backend='torch'"
)


class KernelsUnavailableError(RuntimeError):
    """Raised when backend='cuda' is requested but the kernels cannot be used."""


def check_backend(backend: str | None) -> str:
    """Validate a backend name (None means the environment default)."""
    if backend is None:
        value = os.environ.get(ENV_VAR, "auto")
        if value.lower() not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={value!r}: unknown Mamba backend; valid: "
                             f"{', '.join(BACKENDS)} (or unset it: auto)")
        return value.lower()
    name = str(backend).lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown Mamba backend {backend!r}; valid: {', '.join(BACKENDS)}")
    return name


# Each kernel family is imported on first use; the import error text is kept for the message.
_KERNEL_MODULES = {
    "selective_scan": "mamba_ssm.ops.selective_scan_interface",
    "selective_state_update": "mamba_ssm.ops.triton.selective_state_update",
    "ssd": "mamba_ssm.ops.triton.ssd_combined",
    "rms_norm": "mamba_ssm.ops.triton.layer_norm",
    "gated_rms_norm": "mamba_ssm.ops.triton.layernorm_gated",
    "causal_conv1d": "causal_conv1d",
}


@functools.lru_cache(maxsize=None)
def _load(family: str):
    try:
        return importlib.import_module(_KERNEL_MODULES[family]), None
    except Exception as exc:  # ImportError, missing libcuda, triton errors...
        return None, f"{type(exc).__name__}: {exc}"


def kernel_module(family: str):
    """The imported kernel module of a family, or None if it does not import."""
    return _load(family)[0]


def kernels_available(*families: str) -> bool:
    families = families or tuple(_KERNEL_MODULES)
    return all(kernel_module(f) is not None for f in families)


def use_kernels(backend: str | None, family: str, *tensors) -> bool:
    """True if this call should go to the CUDA kernel of ``family``.

    ``tensors`` are the inputs; ``auto`` takes the kernels only if all of them are on CUDA.
    """
    name = check_backend(backend)
    if name == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if name == "auto":
        return on_cuda and kernel_module(family) is not None
    if not on_cuda:
        _warn_cpu_fallback(next(t.device for t in tensors if t is not None))
        return False
    module, error = _load(family)
    if module is None:
        raise KernelsUnavailableError(
            f"backend='cuda' asked for the {family} kernel, but "
            f"`import {_KERNEL_MODULES[family]}` failed ({error}); {INSTALL_HINT}"
        )
    return True


@functools.lru_cache(maxsize=None)
def _warn_cpu_fallback(device) -> None:
    """Once per process and device kind (lru_cache): one line, not one per op call."""
    logging.warning(
        "backend='cuda' but the model runs on %s: using the PyTorch path (the CUDA kernels "
        "need CUDA tensors); set backend: auto to silence this", device.type)


def fp32_scan(fn):
    """Run a PyTorch-path scan with autocast off: its inputs are already cast to fp32/fp64, and
    under bf16 autocast its matrix products would otherwise drop to bf16 (the state must
    accumulate in fp32, as the kernels do)."""
    import functools

    import torch

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in args if hasattr(a, "device")), "cpu")
        with torch.autocast(device, enabled=False):
            return fn(*args, **kwargs)

    return wrapper
