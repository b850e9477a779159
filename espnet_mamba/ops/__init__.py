"""Kernel-facing ops: the only package that knows about mamba-ssm / causal-conv1d.

Each op has a CUDA path and a PyTorch path behind one switch (see :mod:`.backend`).
"""

from espnet_mamba.ops.backend import (  # noqa: F401
    BACKENDS, KernelsUnavailableError, check_backend, kernels_available,
)
