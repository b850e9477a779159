"""Time of one beam step of CTC prefix scoring: ESPnet's CTCPrefixScoreTH (a Python loop over
the encoder frames) against espnet_mamba's VectorizedCTCPrefixScoreTH (no loop over frames).

    python benchmarks/ctc_prefix_cpu.py --out /tmp/ctc_prefix_cpu.json            (CPU)
    python benchmarks/ctc_prefix_cpu.py --device cuda --out /tmp/ctc_prefix_gpu.json

One utterance of T encoder frames (default 375, 750, 1500: 15, 30, 60 s at 25 frames a second)
with a vocabulary of 5,000, beam 10, as BatchBeamSearch drives the scorer: partial scoring of the
pre-beam (15 labels per hypothesis, ESPnet's 1.5 x beam) and scoring every label ("full"), with
ESPnet's window off (``--ctc_window_margin 0``, exact) and at asr_inference's default (100).

The log-posteriors are synthetic but shaped like a CTC head's: a token every ~6.4 frames (3.9
tokens a second, the rate of read speech), blank elsewhere, so the window follows the
hypotheses as in a real decode.  The hypotheses follow the reference tokens; the pre-beam is
the next reference token and 14 random others.  A step is ``scorer(yseq, state, ids)`` followed
by ``index_select_state`` (what BatchBeamSearch calls per output token).  The states are those
of our scorer along the path; both scorers keep the same state layout, so each is timed on the
same states at ``--points`` positions spread over the utterance (the cost of both depends on
how many frames are left after the prefix), and the median over positions and repeats is
reported with the largest difference between the two scorers' scores and the number of ATen
operations of one step in the middle of the utterance (views left out; on a GPU about one
kernel launch each).  Wall time (with a device synchronisation on a GPU) and, on a CPU, this
process's CPU time (on a shared machine less inflated by waiting for a core).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
from espnet2.legacy.nets.ctc_prefix_score import CTCPrefixScoreTH
from torch.utils._python_dispatch import TorchDispatchMode

from espnet_mamba.integration.ctc_prefix import VectorizedCTCPrefixScoreTH

FRAMES_PER_TOKEN = 6.4
LOGZERO = -1e10


def synthetic_logp(frames: int, vocab: int, seed: int, device, dtype=torch.float32):
    """(1, T, V) log-posteriors with a token every ~FRAMES_PER_TOKEN frames and the reference
    tokens."""
    gen = torch.Generator().manual_seed(seed)
    n_tokens = max(1, int(frames / FRAMES_PER_TOKEN))
    tokens = torch.randint(1, vocab - 1, (n_tokens,), generator=gen)
    at = (torch.arange(n_tokens) * FRAMES_PER_TOKEN + FRAMES_PER_TOKEN / 2).long()
    logits = torch.randn(frames, vocab, generator=gen) * 2
    logits[:, 0] += 12  # blank
    logits[at, tokens] += 18
    logp = torch.log_softmax(logits, -1).unsqueeze(0)
    return logp.to(device=device, dtype=dtype), tokens


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def path_states(logp, tokens, beam, pre_beam, margin, points, seed):
    """(yseq, state, ids) at ``points`` steps spread over the utterance, from our scorer.  The
    path is scored partially (a state selected for the next step has the same layout and values
    whichever labels were scored), then ``ids`` is None for ``pre_beam`` 0 (every label)."""
    vocab = logp.shape[2]
    eos = vocab - 1
    device = logp.device
    gen = torch.Generator().manual_seed(seed)
    scorer = VectorizedCTCPrefixScoreTH(logp.clone(), torch.tensor([logp.shape[1]]), 0, eos,
                                        margin=margin)
    n_steps = len(tokens)
    wanted = sorted({round(i * (n_steps - 1) / max(1, points - 1)) for i in range(points)})
    yseq = torch.full((beam, 1), eos, device=device)
    state, out = None, []
    for step in range(n_steps):
        others = torch.randint(1, vocab - 1, (beam, max(1, pre_beam) - 1), generator=gen)
        ids = torch.cat((tokens[step].expand(beam, 1), others), 1).to(device)
        if step in wanted:
            out.append((yseq, state, ids if pre_beam else None))
        _, new_state = scorer(yseq, state, ids)
        best = (torch.arange(beam) * vocab + tokens[step]).unsqueeze(0).to(device)
        state = scorer.index_select_state(new_state, best)
        yseq = torch.cat((yseq, tokens[step].expand(beam, 1).to(device)), 1)
    return out


def time_step(scorer, yseq, state, ids, repeats, device):
    beam, vocab = yseq.shape[0], scorer.odim
    best = (torch.arange(beam, device=device) * vocab + 1).unsqueeze(0)
    times, cpu_times, scores = [], [], None
    for _ in range(repeats):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        scores, new_state = scorer(yseq, state, ids)
        scorer.index_select_state(new_state, best)
        sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, scores


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations that compute (on a GPU, about one kernel launch each); views,
    which launch nothing, are left out."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func.overloadpacket in FREE_OPS):
            self.count += 1
        return func(*args, **(kwargs or {}))


FREE_OPS = {torch.ops.aten.empty, torch.ops.aten.empty_strided, torch.ops.aten.empty_like,
            torch.ops.aten.lift_fresh, torch.ops.aten.detach}


def count_ops(scorer, yseq, state, ids, device) -> int:
    with OpCounter() as counter:
        time_step(scorer, yseq, state, ids, 1, device)
    return counter.count


def measure(frames, vocab, beam, pre_beam, margin, device, points, repeats, seed=0):
    logp, tokens = synthetic_logp(frames, vocab, seed, device)
    path = path_states(logp, tokens, beam, pre_beam, margin, points, seed)
    length = torch.tensor([frames])
    scorers = {"espnet": CTCPrefixScoreTH(logp.clone(), length, 0, vocab - 1, margin=margin),
               "vectorized": VectorizedCTCPrefixScoreTH(logp.clone(), length, 0, vocab - 1,
                                                        margin=margin)}
    for scorer in scorers.values():  # warm-up (allocator, CUDA kernels)
        time_step(scorer, *path[len(path) // 2], 1, device)
    times = {name: [] for name in scorers}
    cpu_times = {name: [] for name in scorers}
    worst = 0.0
    for yseq, state, ids in path:
        scores = {}
        for name, scorer in scorers.items():
            t, c, scores[name] = time_step(scorer, yseq, state, ids, repeats, device)
            times[name] += t
            cpu_times[name] += c
        live = scores["espnet"] > LOGZERO / 2
        diff = (scores["espnet"].double() - scores["vectorized"].double())[live].abs()
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    ops = {name: count_ops(scorer, *path[len(path) // 2], device)
           for name, scorer in scorers.items()}
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    cpu = {name: statistics.median(t) * 1e3 for name, t in cpu_times.items()}
    return {"frames": frames, "vocab": vocab, "beam": beam,
            "scoring": f"partial ({pre_beam})" if pre_beam else "full", "margin": margin,
            "espnet_ms": round(med["espnet"], 3), "vectorized_ms": round(med["vectorized"], 3),
            "speedup": round(med["espnet"] / med["vectorized"], 2),
            # process CPU time: on a shared machine, less inflated by waiting for a core
            "espnet_cpu_ms": round(cpu["espnet"], 3),
            "vectorized_cpu_ms": round(cpu["vectorized"], 3),
            "cpu_speedup": round(cpu["espnet"] / cpu["vectorized"], 2),
            "espnet_ops": ops["espnet"], "vectorized_ops": ops["vectorized"],
            "steps_timed": len(path) * repeats, "max_abs_score_diff": worst}


def describe(device) -> dict:
    info = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__, "device": str(device),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
        info["load_average_at_start"] = os.getloadavg()
    return info


def main(argv=None, default_device="cpu"):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=default_device)
    ap.add_argument("--frames", type=int, nargs="+", default=[375, 750, 1500])
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--pre-beam", type=int, default=15, help="labels scored per hypothesis")
    ap.add_argument("--scoring", nargs="+", default=["partial", "full"],
                    choices=["partial", "full"])
    ap.add_argument("--margins", type=int, nargs="+", default=[0, 100],
                    help="asr_inference's --ctc_window_margin (0: exact, 100: its default)")
    ap.add_argument("--points", type=int, default=5, help="positions timed per utterance")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full-repeats", type=int, default=1,
                    help="repeats when scoring every label (seconds a step on a CPU)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: a shared CPU; 0 leaves torch's default)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    result = {"setup": describe(device), "results": []}
    with torch.no_grad():
        for scoring in a.scoring:
            for margin in a.margins:
                for frames in a.frames:
                    row = measure(frames, a.vocab, a.beam,
                                  a.pre_beam if scoring == "partial" else 0, margin, device,
                                  a.points, a.repeats if scoring == "partial" else a.full_repeats)
                    print(json.dumps(row), flush=True)
                    result["results"].append(row)
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
