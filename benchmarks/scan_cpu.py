"""PyTorch selective scan (windowed, espnet_mamba.ops) vs the per-step Python loop, on CPU.

    python benchmarks/scan_cpu.py [--batch 8 --length 1000 --d-inner 512 --d-state 16]

Prints one JSON line: medians in seconds and speed-up ratios (loop / windowed), forward only and
forward+backward.  The loop is espnet_mamba.ops.reference.selective_scan_loop (one time step per
Python iteration, as mamba-ssm's selective_scan_ref).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from espnet_mamba.ops.reference import selective_scan_loop
from espnet_mamba.ops.selective_scan import selective_scan_torch


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--d-inner", type=int, default=512)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loop-backward-repeats", type=int, default=1,
                    help="the loop's backward takes minutes: one run by default")
    a = ap.parse_args()
    torch.manual_seed(0)
    b, d, n, l = a.batch, a.d_inner, a.d_state, a.length
    inputs = dict(u=torch.randn(b, d, l), delta=F.softplus(torch.randn(b, d, l) - 2),
                  A=-torch.rand(d, n) * 5, B=torch.randn(b, n, l), C=torch.randn(b, n, l),
                  D=torch.randn(d))

    def fwd(fn):
        with torch.no_grad():
            fn(**inputs)

    def fwd_bwd(fn):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        out = fn(**leaves)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    fwd(selective_scan_torch)  # warm-up
    res = {
        "windowed_fwd_s": timed(lambda: fwd(selective_scan_torch), a.repeats),
        "loop_fwd_s": timed(lambda: fwd(selective_scan_loop), a.repeats),
        "windowed_fwd_bwd_s": timed(lambda: fwd_bwd(selective_scan_torch), a.repeats),
        "loop_fwd_bwd_s": timed(lambda: fwd_bwd(selective_scan_loop), a.loop_backward_repeats),
    }
    res["speedup_fwd"] = res["loop_fwd_s"] / res["windowed_fwd_s"]
    res["speedup_fwd_bwd"] = res["loop_fwd_bwd_s"] / res["windowed_fwd_bwd_s"]
    res.update(shape=dict(batch=b, length=l, d_inner=d, d_state=n), torch=torch.__version__,
               threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
               cores=os.cpu_count(), date=datetime.date.today().isoformat())
    print(json.dumps(res))


if __name__ == "__main__":
    main()
