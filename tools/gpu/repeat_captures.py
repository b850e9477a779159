"""Capture the encoder's training CUDA graphs again and again, each time in a fresh process with
empty kernel caches, and count the captures that fail.

A graphed training step (``encoder_conf: {cuda_graphs: true}``) once failed to capture in one test
run of eight ("operation failed due to a previous error during capture"; docs/performance.md,
GPU correctness checks): too rare to catch in one test run.  Each process here builds a
samba_asr encoder with dropout (the test that failed), trains ``--steps`` steps under bf16
autocast (an eager step, then the capture, then replays), keeping each step's output as a
caller may (so the previous step's autograd graph is alive during the capture), and reports
whether its capture succeeded and, if not, the error with the encoder's logged traceback.
Every process gets its own empty ``TRITON_CACHE_DIR``, so triton compiles (and autotunes) its
kernels again as on a fresh machine.

    python tools/gpu/repeat_captures.py --processes 16 --out /tmp/captures.json
    python tools/gpu/repeat_captures.py --processes 8 --size paper --out /tmp/c.json

Exit status 0 if every capture succeeded, 1 if any failed (the JSON has each error)."""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

# encoder sizes: the failing GPU test's, and a shipped LibriSpeech-100 config's
SIZES = {"test": {"output_size": 64, "num_blocks": 2, "d_state": 16},
         "paper": {"output_size": 256, "num_blocks": 30, "d_state": 16}}
BUCKETS = {"frame_step": 16, "batch_step": 2}


def child(size: str, steps: int) -> dict:
    """One process's run: build, train, report (the encoder turns to eager after a failure)."""
    import torch

    from espnet_mamba.encoders.samba_asr import SambaASREncoder

    torch.manual_seed(0)
    enc = SambaASREncoder(80, dropout_rate=0.1, cuda_graphs=True, cuda_graph_conf=BUCKETS,
                          **SIZES[size]).cuda().train()
    x = torch.randn(2, 480, 80, device="cuda")
    ilens = torch.tensor([480, 360], device="cuda")
    finite, kept = True, []
    for _ in range(steps):
        enc.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, olens, _ = enc(x, ilens)
        y.float().square().mean().backward()
        finite &= bool(y.isfinite().all())
        kept.append(y)
    torch.cuda.synchronize()
    graphs = enc.training_graphs
    return {"captures": graphs.captures, "capture_error": graphs.capture_error,
            "finite": finite, "device": torch.cuda.get_device_name(0)}


def summarise(runs: list) -> dict:
    """Counts over the processes; the distinct errors with how often each came."""
    failed = [r for r in runs if r.get("capture_error") or r.get("exit_status", 0) != 0
              or not r.get("captures")]
    errors = collections.Counter(
        (r.get("capture_error") or r.get("stderr_tail") or "no capture").splitlines()[0][:300]
        for r in failed)
    return {"processes": len(runs), "failed": len(failed),
            "errors": [{"first_line": e, "count": n} for e, n in errors.most_common()]}


def _text(output) -> str:
    """A TimeoutExpired's captured output: bytes whatever ``text`` said, or None."""
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def run_parent(args) -> int:
    runs = []
    for i in range(args.processes):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TRITON_CACHE_DIR=cache)
            t = time.time()
            cmd = [sys.executable, __file__, "--child", "--size", args.size, "--steps",
                   str(args.steps)]
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                      timeout=args.timeout)
            except subprocess.TimeoutExpired as err:  # a hung process fails, the others run
                proc = subprocess.CompletedProcess(
                    cmd, 124, _text(err.stdout),
                    f"timed out after {args.timeout} s\n{_text(err.stderr)}")
        run = {"process": i, "exit_status": proc.returncode, "seconds": round(time.time() - t, 1)}
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode == 0 and lines:
            run.update(json.loads(lines[-1]))
        if proc.returncode != 0 or not lines or run.get("capture_error"):
            run["stderr_tail"] = proc.stderr[-6000:]  # with the logged traceback
        runs.append(run)
        print(f"process {i}: exit {run['exit_status']}, captures {run.get('captures')}, "
              f"error {(run.get('capture_error') or '-').splitlines()[0][:120]}", flush=True)
        result = {"size": args.size, "steps": args.steps, "runs": runs, **summarise(runs)}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    return 1 if result["failed"] else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=16)
    p.add_argument("--size", choices=sorted(SIZES), default="test")
    p.add_argument("--steps", type=int, default=6, help="training steps a process (>= warm-up + 2)")
    p.add_argument("--timeout", type=float, default=300, help="seconds a process")
    p.add_argument("--out", default="repeat_captures.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.processes < 1:
        p.error("--processes must be at least 1")
    if args.child:
        print(json.dumps(child(args.size, args.steps)))
        return 0
    return run_parent(args)


if __name__ == "__main__":
    sys.exit(main())
