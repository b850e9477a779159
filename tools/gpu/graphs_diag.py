"""Diagnostics of the encoders' ``cuda_graphs`` option on the GPU (not a test: it prints).

1. ``capture``: the sequence of tests/gpu/test_graphed_encoder_cuda.py's pool test, whose first
   capture failed on the H100 in session 6 (speech_mamba, torch's RMSNorm, fp32, the capture
   in a bare forward), under variants, each in its own process (a failed capture used to spoil
   the process's random-number generator):
     shipped        thread_local capture mode (training_graphs.py since session 6)
     global         torch's default capture mode (as in session 6's failing run)
     relaxed        no API call is refused during the capture
     triton_norm    the triton add+RMSNorm (the passing tests used it)
     in_train_step  the capture in a training step instead of a bare forward
   A variant prints its captures, the capture error and whether every step == eager.
2. ``memory``: what a full-size graphed encoder leaves allocated after ``clear()`` (the
   benchmark's resident memory grew from setting to setting in session 6), and which live CUDA
   tensors hold it.

    python tools/gpu/graphs_diag.py [capture] [memory]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("shipped", "global", "relaxed", "triton_norm", "in_train_step")


def _pool_sequence(variant: str) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "gpu"))
    import contextlib
    import functools

    import conftest  # noqa: F401 - the GPU tests' fp32 settings
    from espnet_mamba.modules import training_graphs
    from espnet_mamba.ops import rms_norm
    from test_graphed_encoder_cuda import build, train_step

    if variant in ("global", "relaxed"):
        mode = variant

        @contextlib.contextmanager
        def capture_mode():
            original = torch.cuda.graph
            torch.cuda.graph = functools.partial(original, capture_error_mode=mode)
            try:
                yield
            finally:
                torch.cuda.graph = original

        training_graphs._thread_local_capture = capture_mode
    if variant == "triton_norm":
        rms_norm.TRITON_MIN_NUMEL = 0
    eager, graphed = build("speech_mamba"), build("speech_mamba", graphs=True)
    out = {"variant": variant, "steps": []}
    try:
        for frames in (120, 240, 120, 240, 120, 240, 110, 230):
            x = torch.randn(2, frames, 20, device="cuda")
            ilens = torch.tensor([frames, frames // 2], device="cuda")
            y_e, _, g_e = train_step(eager, x, ilens, amp=False)
            y_g, _, g_g = train_step(graphed, x, ilens, amp=False)
            err = max([((y_g - y_e).abs().max() / y_e.abs().max()).item()]
                      + [((g_g[n] - g).abs().max() / (g.abs().max() + 1e-12)).item()
                         for n, g in g_e.items()])
            out["steps"].append({"frames": frames, "max_rel_err": err})
            if variant != "in_train_step":
                graphed.zero_grad(set_to_none=True)
                graphed(x, ilens)[0].sum()  # a forward alone, as the test does
    except Exception as err:  # noqa: BLE001 - reported
        out["error"] = "".join(traceback.format_exception(err))[-3000:]
    graphs = graphed.training_graphs
    out.update(captures=graphs.captures, capture_error=graphs.capture_error,
               disabled=graphs.disabled)
    try:
        torch.randn(4, device="cuda").sum().item()
        out["rng_after"] = "ok"
    except Exception as err:  # noqa: BLE001
        out["rng_after"] = f"{type(err).__name__}: {err}"
    return out


def capture_variants() -> list:
    results = []
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--one", variant], capture_output=True,
                              text=True, timeout=600, cwd=ROOT)
        line = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        res = json.loads(line[-1]) if line else {"variant": variant, "rc": proc.returncode,
                                                 "stderr": proc.stderr[-3000:]}
        print(json.dumps(res, indent=1), flush=True)
        results.append(res)
    return results


def _cuda_tensors() -> dict:
    found = {}
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj) and obj.is_cuda:
                found[id(obj)] = obj
        except Exception:  # noqa: BLE001, S112 - objects that refuse inspection
            continue
    return found


def memory() -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import encoder_gpu

    res = {}
    enc, _ = encoder_gpu.build("samba_asr_graphed", False)
    enc.cuda().train()
    params = {id(p) for p in enc.parameters()}
    gc.collect()
    torch.cuda.empty_cache()
    res["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    before = set(_cuda_tensors())
    for frames in (1500, 1500, 1500, 3000, 3000, 3000):  # two shapes, each captured
        x = torch.randn(8, frames, 80, device="cuda")
        ilens = torch.full((8,), frames, device="cuda")
        enc.zero_grad(set_to_none=True)  # else the option rightly runs eagerly (accumulation)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = enc(x, ilens)[0]
        y.float().square().mean().backward()
        del x, y
    res["captures"] = enc.training_graphs.captures
    if res["captures"] != 2:  # a run that captured nothing says nothing about the captures
        res["warning"] = f"expected 2 captures, got {res['captures']}"
    res["after_steps_gib"] = torch.cuda.memory_allocated() / 2**30
    enc.zero_grad(set_to_none=True)
    enc.training_graphs.clear()
    gc.collect()
    torch.cuda.empty_cache()
    res["after_clear_gib"] = torch.cuda.memory_allocated() / 2**30
    live = [t for i, t in _cuda_tensors().items() if i not in before and i not in params]
    live.sort(key=lambda t: -t.untyped_storage().nbytes())
    res["left_tensors"] = []
    for t in live[:15]:
        holders = [type(r).__name__ for r in gc.get_referrers(t)
                   if not isinstance(r, (list, dict)) or len(r) < 50][:6]
        res["left_tensors"].append({"shape": list(t.shape), "dtype": str(t.dtype),
                                    "mib": t.untyped_storage().nbytes() / 2**20,
                                    "held_by": holders})
    res["left_total_mib"] = sum(t.untyped_storage().nbytes() for t in live) / 2**20
    print(json.dumps(res, indent=1), flush=True)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="*", default=["capture", "memory"])
    ap.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(_pool_sequence(args.one)), flush=True)
        return
    report, out = {}, args.out / "graphs_diag.json"
    if "capture" in args.what:
        report["capture"] = capture_variants()
        out.write_text(json.dumps(report, indent=1))
    if "memory" in args.what:
        try:
            report["memory"] = memory()
        except Exception as err:  # noqa: BLE001 - the capture results are kept
            report["memory"] = {"error": "".join(traceback.format_exception(err))[-3000:]}
        out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
