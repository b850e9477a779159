"""Where the GPU waits: idle gaps of a torch.profiler chrome trace, and what the host was doing.

    python tools/gpu/trace_gaps.py PROFILE.trace.json.gz [--steps 3] [--min-us 20]

benchmarks/encoder_gpu.py ``--profile-dir`` writes such traces.  A step's wall time is the GPU's
busy time plus the gaps in which nothing runs on it; in a gap the GPU waits for the host (a
launch, Python work, a host sync).  For every gap of at least ``--min-us``, the innermost host
op (``cpu_op`` or CUDA runtime call) running at the gap's middle is its cause; the report sums
the gaps per cause, per step, and counts the device events by the host call that launched
them (how many a CUDA graph replays).
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys

DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
HOST_CATS = {"cpu_op", "cuda_runtime", "cuda_driver", "python_function", "user_annotation"}


def load(path: str) -> list:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def busy_intervals(events: list) -> list:
    """Merged (start, end) of the device's work, in µs."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in DEVICE_CATS)
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def innermost(host: list, t: float) -> str:
    """The shortest host event that contains time t (the deepest op running then)."""
    best = None
    for e in host:
        if e["ts"] <= t <= e["ts"] + e["dur"] and (best is None or e["dur"] < best["dur"]):
            best = e
    return best["name"] if best else "(no host op)"


def gaps(events: list, min_us: float) -> tuple:
    """(busy µs, [(gap µs, cause)]) between the first and the last device event."""
    busy = busy_intervals(events)
    host = [e for e in events if e.get("cat") in HOST_CATS]
    out = []
    for (_, end), (start, _) in zip(busy, busy[1:]):
        if start - end >= min_us:
            out.append((start - end, innermost(host, (start + end) / 2)))
    return sum(b - a for a, b in busy), out


def launchers(events: list) -> collections.Counter:
    """Device events by the host call that launched them (``cudaGraphLaunch``: replayed from a
    CUDA graph), matched through the trace's correlation ids."""
    calls = {e["args"]["correlation"]: e["name"] for e in events
             if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    return collections.Counter(calls.get(e.get("args", {}).get("correlation"), "(unmatched)")
                               for e in events if e.get("cat") in DEVICE_CATS)


def report(path: str, steps: int, min_us: float, top: int = 25) -> str:
    events = load(path)
    busy, found = gaps(events, min_us)
    launched = launchers(events)
    by_cause = collections.Counter()
    counts = collections.Counter()
    for dur, cause in found:
        by_cause[cause] += dur
        counts[cause] += 1
    idle = sum(d for d, _ in found)
    lines = [f"{path}: per step, device busy {busy / steps / 1e3:.2f} ms, idle in gaps >= "
             f"{min_us:g} us {idle / steps / 1e3:.2f} ms ({len(found) / steps:.0f} gaps)",
             "device events per step by launching call: " + ", ".join(
                 f"{name} {n / steps:.0f}" for name, n in launched.most_common()),
             f"{'idle ms/step':>12}  {'gaps/step':>9}  host op at the gap's middle"]
    for cause, dur in by_cause.most_common(top):
        lines.append(f"{dur / steps / 1e3:12.3f}  {counts[cause] / steps:9.1f}  {cause[:90]}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--steps", type=int, default=3, help="steps the trace holds")
    ap.add_argument("--min-us", type=float, default=20.0)
    args = ap.parse_args(argv)
    for path in args.traces:
        print(report(path, args.steps, args.min_us))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
