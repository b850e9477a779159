"""Where does an eager Mamba2 mixer spend its host time?  GPU diagnostic.

    python3 tools/gpu/mamba2_host_profile.py OUT_DIR

Eager Mamba2 encoders take 300-490 ms per training step at every length measured on the H100
(docs/benchmarks.md, session 6): 46 mixers at ~7-8 ms of host time each, far more than the
~15 triton launches a mixer's forward and backward make.  This runs one mixer of the benchmark
size (d_model 512, headdim 64, d_state 64) forward + backward at B8 x 1500 frames (60 s after
the 4x subsampling), times it (wall time per call with the GPU synchronised once at the end vs
CUDA time), and writes cProfile tables (by own time and by cumulative time) of 20 calls to
OUT_DIR/mamba2_host_profile.txt, so the Python functions that cost the host time are named.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

from espnet_mamba.modules.mamba2 import Mamba2


def step(mixer, x):
    mixer(x).float().square().mean().backward()


def main(argv):
    out = Path(argv[0] if argv else ".")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    mixer = Mamba2(512, d_state=64, headdim=64, backend="cuda").cuda()
    x = torch.randn(8, 1500, 512, device="cuda", requires_grad=True)
    lines = []
    for amp in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            for _ in range(5):
                step(mixer, x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                step(mixer, x)
            host = (time.perf_counter() - t0) / 20 * 1e3
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 20 * 1e3
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                step(mixer, x)
            end.record()
            torch.cuda.synchronize()
            lines.append(f"bf16 autocast {amp}: host {host:.2f} ms per fwd+bwd (calls only), "
                         f"wall {wall:.2f} ms, CUDA events {start.elapsed_time(end) / 20:.2f} ms")
            print(lines[-1], flush=True)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(20):
                step(mixer, x)
            prof.disable()
            torch.cuda.synchronize()
            for key in ("tottime", "cumtime"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(40)
                lines.append(f"== amp {amp}, 20 calls, sorted by {key}\n{buf.getvalue()}")
    (out / "mamba2_host_profile.txt").write_text("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
