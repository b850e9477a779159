"""What the decoding graphs (``decoding.py``) and the training graphs (``training.py``) share:
how a user turns them off, the parameter signature a graph is bound to, and the repair of a
process after a failed capture."""

from __future__ import annotations

import torch

from espnet_mamba.modules.execution import ENV_VAR

# the run-time switch, as messages name it (the execution option ``cuda_graphs``)
TURN_OFF = f"{ENV_VAR}=cuda_graphs=false"


def recover_from_failed_capture(device: torch.device, stream) -> None:
    """Undo what a failed capture leaves behind.  When ``CUDAGraph.capture_end`` raises (the
    capture was invalidated), ``torch.cuda.graph.__exit__`` stops there: the thread stays on the
    capture's side stream, and CUDA's random-number generator stays in capture mode, so every
    later random op of the process raises "Offset increment outside graph capture" (seen on
    an H100).  This puts ``stream`` back and runs one trivial capture, whose
    prologue and epilogue reset the generator; a random draw checks it.  Raises if the process
    cannot be put right.  Off CUDA (``stream`` None) there is nothing to undo."""
    if stream is None or device.type != "cuda":
        return
    torch.cuda.set_stream(stream)
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        scratch = torch.zeros(1, device=device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            scratch.add_(1)
        del graph
        torch.rand(1, device=device)
        torch.cuda.synchronize()


def parameter_signature(params) -> tuple:
    """Which parameters (of a module, or a list) and where and how they live: a graph reads
    them from these addresses, and returns gradients to these objects (a parameter replaced by
    a new one at the same address is a change too)."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    return tuple([(id(p), p.data_ptr(), p.dtype, p.device) for p in params])
