"""Where one ``asr_train`` training step goes: the whole ESPnet model's forward, backward and
optimizer step, split into its parts, for the shipped configs and ESPnet's Conformer.

``benchmarks/asr_train_throughput.py`` gives seconds per epoch through ``asr_train``; this says
why.  Each model is built by ESPnet's ``ASRTask`` from the same configs (same token list of
5,000 entries, ``utterance_mvn``), and trained on one fixed batch of ``--seconds`` long noise
utterances, as many as ``batch_bins`` (16,000,000 samples, the configs' value) holds: the
padded batch a ``numel`` sampler makes of utterances of that length.  bf16 autocast and Adam, as
the configs train on a GPU.  For each model and length, medians over ``--steps`` steps after
``--warmup``:

- ``step_ms``: the whole step, synchronised (forward, backward, optimizer step);
- per part of the forward (``frontend`` with SpecAugment and normalisation, ``encoder``,
  ``ctc``, ``decoder`` with its loss), ``host_ms``: the time the host spends in the call
  (kernels are queued, not waited for, so a part whose host time is close to its share of the
  step is bound by the host's work), and ``backward_host_ms`` / ``optimizer_host_ms``;
- from one profiled step (``torch.profiler``): ``kernel_ms``, the summed time of the GPU
  kernels and copies, ``kernel_launches`` (the host's launch calls; a CUDA-graph replay is one
  ``graph_launches``), each forward part's GPU span, the kernels with the most time; ``gpu_busy`` = kernel_ms / step_ms (low:
  the GPU waits for the host).

    python benchmarks/asr_step_breakdown.py --out /tmp/breakdown.json
    python benchmarks/asr_step_breakdown.py --tiny --device cpu --out /tmp/b.json   (smoke)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asr_train_throughput import (MODELS, SAMPLE_RATE, TINY_CONF, TOKENS_PER_SECOND,  # noqa: E402
                                  VARIANTS, VOCAB, baseline_config, environment, merge,
                                  token_list)

PARTS = ("frontend", "encoder", "ctc", "decoder")


def build(name: str, config_src: Path, tokens: Path, tiny: bool, device: str):
    """The ESPnet ASR model of a config, as asr_train builds it."""
    import torch
    import yaml
    from espnet2.tasks.asr import ASRTask

    config = yaml.safe_load(Path(config_src).read_text())
    if name in VARIANTS:
        config = merge(config, VARIANTS[name][1])
    if tiny:
        config = merge(config, TINY_CONF[name])
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)
    args = ASRTask.get_parser().parse_args(
        ["--config", f.name, "--token_list", str(tokens), "--token_type", "word",
         "--normalize", "utterance_mvn"])
    Path(f.name).unlink()
    torch.manual_seed(0)
    return ASRTask.build_model(args).to(device).train(), config


def batch(seconds: float, batch_bins: int, vocab: int, device: str, seed: int = 0):
    """The padded batch of ``seconds``-long utterances that ``batch_bins`` samples hold (the
    numel sampler counts rows x the longest row), with transcripts at LibriSpeech's token
    rate."""
    import torch

    g = torch.Generator().manual_seed(seed)
    samples = int(seconds * SAMPLE_RATE)
    rows = max(1, batch_bins // samples)
    # lengths within a sorted numel batch differ little: the shortest row 10 % shorter
    lengths = torch.linspace(samples, int(samples * 0.9), rows).long()
    speech = 0.05 * torch.randn(rows, samples, generator=g)
    n_tok = max(1, round(TOKENS_PER_SECOND * seconds))
    text = torch.randint(2, vocab - 1, (rows, n_tok), generator=g)
    text_lengths = torch.full((rows,), n_tok, dtype=torch.long)
    return [t.to(device) for t in (speech, lengths, text, text_lengths)]


class PartTimer:
    """Host time of the model's forward parts, wrapping the model's own methods (instance
    attributes, not module hooks: the encoders' CUDA graphs refuse modules with hooks)."""

    def __init__(self, model):
        self.host = {p: 0.0 for p in PARTS}
        self._wrap(model, "encode", None)           # front-end + SpecAugment + normalise + encoder
        self._wrap(model.encoder, "forward", "encoder")
        self._wrap(model, "_calc_ctc_loss", "ctc")
        self._wrap(model, "_calc_att_loss", "decoder")
        self._encode = 0.0

    def _wrap(self, obj, attr, part):
        import torch

        original = getattr(obj, attr)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            with torch.profiler.record_function(f"part:{part or 'encode'}"):
                out = original(*args, **kwargs)
            dt = time.perf_counter() - t
            if part is None:
                self._encode += dt
            else:
                self.host[part] += dt
            return out

        setattr(obj, attr, timed)

    def take(self) -> dict:
        self.host["frontend"] = self._encode - self.host["encoder"]
        out = {p: 1000 * v for p, v in self.host.items()}
        self.host = {p: 0.0 for p in PARTS}
        self._encode = 0.0
        return out


def sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(model, optim, data, device: str, amp: bool, timer: PartTimer) -> dict:
    import torch

    sync(device)
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        loss, _, _ = model(*data)
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    optim.step()
    optim.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    sync(device)
    t4 = time.perf_counter()
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()}")
    return {"step_ms": 1000 * (t4 - t0), "forward_host_ms": 1000 * (t1 - t0),
            "backward_host_ms": 1000 * (t2 - t1), "optimizer_host_ms": 1000 * (t3 - t2),
            **{f"{p}_host_ms": v for p, v in timer.take().items()}}


TOP_KERNELS = 15  # the GPU activities with the most time, by name, kept in the JSON
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def gpu_totals(events) -> dict:
    """From torch.profiler's events of one step: the GPU activities' summed time (kernels,
    copies; ranges such as the ``part:`` ones and the optimizer's are spans, not work, and are
    not summed: each ``part:`` span is reported by itself, ``encode`` = front-end + encoder),
    the kernel launches and CUDA-graph launches the host made, and each part's GPU span."""
    from torch.autograd import DeviceType

    kernel_us, launches, graphs, parts, by_name = 0.0, 0, 0, {}, {}
    for e in events:
        if e.device_type == DeviceType.CUDA:
            if getattr(e, "is_user_annotation", False):  # a range (ours, the optimizer's)
                if e.name.startswith("part:"):
                    name = e.name.split(":", 1)[1]
                    parts[name] = parts.get(name, 0.0) + e.time_range.elapsed_us() / 1000
            else:
                kernel_us += e.time_range.elapsed_us()
                by_name[e.name] = by_name.get(e.name, 0.0) + e.time_range.elapsed_us() / 1000
        elif e.name in LAUNCHES:
            launches += 1
        elif e.name == "cudaGraphLaunch":
            graphs += 1
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:TOP_KERNELS]
    return {"kernel_ms": kernel_us / 1000, "kernel_launches": launches,
            "graph_launches": graphs, "part_gpu_span_ms": parts,
            "top_kernels_ms": [[name[:160], ms] for name, ms in top]}


def profiled_step(model, optim, data, device: str, amp: bool, timer: PartTimer) -> dict:
    """One step under torch.profiler (``gpu_totals``); on a CPU nothing to count."""
    from torch.profiler import ProfilerActivity, profile

    if not device.startswith("cuda"):
        return {"kernel_ms": None, "kernel_launches": None, "graph_launches": None,
                "part_gpu_span_ms": None, "top_kernels_ms": None}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_step(model, optim, data, device, amp, timer)
    return gpu_totals(prof.events())


def measure(name, config_src, tokens, seconds, args) -> dict:
    import torch

    model, config = build(name, config_src, tokens, args.tiny, args.device)
    amp = bool(config.get("use_amp", False)) and args.device.startswith("cuda")
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    timer = PartTimer(model)
    data = batch(seconds, args.batch_bins, args.vocab, args.device)
    for _ in range(args.warmup):
        train_step(model, optim, data, args.device, amp, timer)
    steps = [train_step(model, optim, data, args.device, amp, timer) for _ in range(args.steps)]
    med = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
    prof = profiled_step(model, optim, data, args.device, amp, timer)
    out = {"rows": int(data[0].shape[0]), "seconds": seconds, "amp_bf16": amp,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6, **med, **prof}
    out["gpu_busy"] = out["kernel_ms"] / out["step_ms"] if out["kernel_ms"] is not None else None
    graphs = getattr(model.encoder, "training_graphs", None)
    if graphs is not None:
        out["graph_captures"] = graphs.captures
        out["graph_capture_error"] = graphs.capture_error
    del model, optim
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def report(result: dict) -> str:
    """A markdown table of the medians, with each model's step over the baseline's."""
    lines = ["| model | s | rows | step ms | vs conformer | frontend / encoder / ctc / decoder "
             "host ms | backward host ms | kernel ms | GPU busy | launches |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in result["runs"].items():
        if "error" in r:
            lines.append(f"| {key} | | | {r['error'][:60]} | | | | | | |")
            continue
        base = result["runs"].get(f"conformer@{r['seconds']:g}", {}).get("step_ms")
        ratio = f"{base / r['step_ms']:.2f}x" if base else ""
        hosts = " / ".join(f"{r[f'{p}_host_ms']:.1f}" for p in PARTS)
        gpu = (f"{r['kernel_ms']:.1f} | {r['gpu_busy']:.2f} | {r['kernel_launches']}"
               if r["kernel_ms"] is not None else "- | - | -")
        lines.append(f"| {key.split('@')[0]} | {r['seconds']:g} | {r['rows']} | "
                     f"{r['step_ms']:.1f} | {ratio} | {hosts} | {r['backward_host_ms']:.1f} | {gpu} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["conformer", "samba_asr", "speech_mamba"],
                   choices=list(MODELS))
    p.add_argument("--seconds", nargs="+", type=float, default=[14.0, 30.0],
                   help="utterance length of each batch (LibriSpeech's typical and longest)")
    p.add_argument("--batch-bins", type=int, default=16000000, help="the configs' value")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps (graph captures in them)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--baseline-config", help="ESPnet's Conformer config (asr_train_throughput.py)")
    p.add_argument("--tiny", action="store_true", help="toy models and lengths (CPU smoke)")
    p.add_argument("--out", required=True, help="JSON, rewritten after each run")
    args = p.parse_args(argv)
    bad = [s for s in args.seconds if not s > 0]
    if bad:
        p.error(f"--seconds must be positive, got {bad}")
    args.vocab = 100 if args.tiny else VOCAB
    if args.tiny:
        args.batch_bins = min(args.batch_bins, 64000)
    if "conformer" not in args.models:
        args.models = ["conformer", *args.models]  # the ratios need the baseline
    result = {"benchmark": "asr_step_breakdown", "command": [sys.argv[0], *(argv or sys.argv[1:])],
              "environment": environment(),
              "settings": {"batch_bins": args.batch_bins, "warmup": args.warmup,
                           "steps": args.steps, "device": args.device, "tiny": args.tiny},
              "runs": {}}
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        tokens = Path(tmp) / "tokens.txt"
        tokens.write_text("\n".join(token_list(args.vocab)) + "\n")
        for seconds in args.seconds:
            for name in args.models:
                src = baseline_config(args.baseline_config) if MODELS[name] is None else MODELS[name]
                key = f"{name}@{seconds:g}"
                print(f"[{time.strftime('%H:%M:%S')}] {key}", flush=True)
                try:
                    result["runs"][key] = measure(name, src, tokens, seconds, args)
                except Exception as err:  # one model's failure still reports the others
                    result["runs"][key] = {"seconds": seconds, "error": f"{type(err).__name__}: {err}"}
                out.write_text(json.dumps(result, indent=1))
    print(report(result))
    return result


if __name__ == "__main__":
    main()
