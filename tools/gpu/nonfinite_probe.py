"""Find where a training run first produces inf/NaN: forward hooks on every module of the model.

Used by amp_check.py ``--probe-nonfinite`` (issue 7: samba_asr under fp16 autocast overflows
on the H100 while bf16 is clean).  ``install(model)`` hooks every submodule; for each training
forward it records, per module, the largest |value| of its floating outputs, and the first module
(in execution order) whose output is not finite, with the largest |value| of its inputs.  Lines
start with ``[probe]`` in the training log:
  * every ``report_every`` forwards: the modules with the largest outputs so far (fp16 overflows
    at 65504, so a module creeping towards that is the suspect before anything breaks);
  * at the first non-finite output of a forward: module name, class, input/output magnitudes.
Costs a device sync per module and forward: diagnostics only.
"""

from __future__ import annotations

import sys

import torch


def _tensors(obj):
    """Floating tensors in a (nested) module output."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _absmax(obj) -> float:
    vals = [t.detach().abs().max().float() for t in _tensors(obj) if t.numel()]
    return float(torch.stack(vals).max()) if vals else 0.0


def _finite(obj) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _tensors(obj))


def install(model: torch.nn.Module, report_every: int = 50, max_reports: int = 10) -> None:
    state = {"forward": 0, "found": False, "reports": 0, "peak": {}}

    def log(msg):
        print(f"[probe] fwd {state['forward']}: {msg}", file=sys.stderr, flush=True)

    def top_pre(module, args, kwargs):
        if module.training:
            state["forward"] += 1
            state["found"] = False
            if state["forward"] % report_every == 0:
                top = sorted(state["peak"].items(), key=lambda kv: -kv[1][0])[:8]
                log("largest outputs so far: " + "; ".join(
                    f"{n} {v:.3g} ({d})" for n, (v, d) in top))

    def hook_for(name):
        def hook(module, args, output):
            if not model.training:
                return
            m = _absmax(output)
            dtypes = sorted({str(t.dtype).replace("torch.", "") for t in _tensors(output)})
            if m == m and m > state["peak"].get(name, (-1.0,))[0]:
                state["peak"][name] = (m, ",".join(dtypes))
            if not state["found"] and state["reports"] < max_reports and not _finite(output):
                state["found"] = True
                state["reports"] += 1
                log(f"first non-finite output: {name} ({type(module).__name__}), output "
                    f"dtypes {dtypes}, input max |x| {_absmax(args):.4g}, input finite "
                    f"{_finite(args)}, output max |x| {m:.4g}")
        return hook

    model.register_forward_pre_hook(top_pre, with_kwargs=True)
    for name, module in model.named_modules():
        if name:
            module.register_forward_hook(hook_for(name))
