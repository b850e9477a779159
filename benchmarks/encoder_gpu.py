"""Encoder speed and memory vs audio length, our Mamba encoders beside ESPnet's own, in one run.

    python benchmarks/encoder_gpu.py --out encoder_h100.json   # results: docs/performance.md
    python benchmarks/encoder_gpu.py --device cpu --tiny --out /tmp/enc.json   # a smoke run

What it measures: ESPnet's LibriSpeech-960 Conformer (512, 8 heads, 2048 units, 12
blocks, rel-pos, macaron, conv kernel 31) and E-Branchformer (512, 17 blocks), each with the
recipe's default attention and with ``use_sdpa=True``, against ``samba_asr`` and
``speech_mamba`` encoders sized to the Conformer's parameter count.  80-dim random features at
100 frames/s, conv2d subsampling, fp32 weights under bf16 autocast; per setting a warm-up, then
the median of ``--repeats`` runs timed with CUDA events; peak memory with the allocator's stats
reset between settings.  Settings: lengths x batch {8, 1} x {train: forward+backward, infer:
no_grad forward}.  A model that runs out of memory at one length is not tried at longer ones
(same batch and mode); batches > 1 stop at ``--max-batched-seconds`` (300 s).  Then
``--packed``: one LibriSpeech-like batch (8 utterances of 2-35 s)
trained padded vs packed (``pack_sequences``) with Mamba2 mixers, with the CTC losses compared.

Results go to ``--out`` (JSON, rewritten after every setting, so a run cut short keeps what it
measured); benchmarks/encoder_report.py turns them into tables and plots.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import gzip
import json
import math
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from espnet_mamba.modules.execution import Execution, set_execution

FEATS, FPS = 80, 100
LENGTHS_S = [15, 30, 60, 120, 300, 600, 1200]
# LibriSpeech-like utterance lengths (s) for the packed-vs-padded batch (2-35 s, as in train-960)
PACKED_BATCH_S = [2.1, 4.7, 7.3, 11.2, 14.8, 19.5, 26.0, 34.6]

CONFORMER = dict(output_size=512, attention_heads=8, linear_units=2048, num_blocks=12,
                 input_layer="conv2d", macaron_style=True, rel_pos_type="latest",
                 pos_enc_layer_type="rel_pos", selfattention_layer_type="rel_selfattn",
                 activation_type="swish", use_cnn_module=True, cnn_module_kernel=31,
                 dropout_rate=0.1, positional_dropout_rate=0.1, attention_dropout_rate=0.1)
EBRANCHFORMER = dict(output_size=512, attention_heads=8, attention_layer_type="rel_selfattn",
                     pos_enc_layer_type="rel_pos", rel_pos_type="latest",
                     cgmlp_linear_units=3072, cgmlp_conv_kernel=31, use_linear_after_conv=False,
                     gate_activation="identity", num_blocks=17, dropout_rate=0.1,
                     positional_dropout_rate=0.1, attention_dropout_rate=0.1,
                     input_layer="conv2d", layer_drop_rate=0.0, linear_units=1024,
                     positionwise_layer_type="linear", use_ffn=True, macaron_ffn=True,
                     merge_conv_kernel=31)
# Sized to the Conformer's 83.2M parameters (printed at start-up): 22 bidirectional Mamba
# blocks (81.9M); 10 Speech-Mamba layers (85.7M); 23 bidirectional Mamba2 blocks (83.4M).
SAMBA = dict(output_size=512, num_blocks=22, input_layer="conv2d", d_state=16, expand=2)
SPEECH_MAMBA = dict(output_size=512, attention_heads=8, num_blocks=10, input_layer="conv2d",
                    d_state=16, expand=2)
# The same parameter budget in fewer, wider blocks (84.4M): at 15-30 s a Mamba encoder is bound
# by the host's launch work per layer (docs/performance.md), so 9 blocks of width 768 launch
# 18 bidirectional mixers where 22 of width 512 launch 44.
SAMBA_WIDE = dict(output_size=768, num_blocks=9, input_layer="conv2d", d_state=16, expand=2)
SAMBA_M2 = dict(output_size=512, num_blocks=23, input_layer="conv2d", mixer="mamba2",
                d_state=64, expand=2, mixer_conf={"headdim": 64})
SPEECH_MAMBA_M2 = dict(output_size=512, attention_heads=8, num_blocks=10, input_layer="conv2d",
                       mixer="mamba2", d_state=64, expand=2, mixer_conf={"headdim": 64})
TINY = dict(output_size=64, num_blocks=2)  # --tiny: every model at this size (CPU smoke)


DEFAULT_MODELS = ["conformer", "conformer_sdpa", "e_branchformer", "e_branchformer_sdpa",
                  "samba_asr", "speech_mamba", "samba_asr_mamba2", "samba_asr_torchnorm",
                  "samba_asr_composed", "samba_asr_merged", "samba_asr_wide",
                  "samba_asr_graphed", "speech_mamba_graphed", "samba_asr_wide_graphed",
                  "samba_asr_mamba2_graphed", "speech_mamba_mamba2_graphed"]


def model_table():
    """name -> (builder, constructor options)."""
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder
    from espnet2.asr.encoder.e_branchformer_encoder import EBranchformerEncoder

    from espnet_mamba.encoders.samba_asr import SambaASREncoder
    from espnet_mamba.encoders.speech_mamba import SpeechMambaEncoder

    return {
        "conformer": (ConformerEncoder, CONFORMER),
        "conformer_sdpa": (ConformerEncoder, {**CONFORMER, "use_sdpa": True}),
        "e_branchformer": (EBranchformerEncoder, EBRANCHFORMER),
        "e_branchformer_sdpa": (EBranchformerEncoder, {**EBRANCHFORMER, "use_sdpa": True}),
        "samba_asr": (SambaASREncoder, SAMBA),
        "speech_mamba": (SpeechMambaEncoder, SPEECH_MAMBA),
        "samba_asr_mamba2": (SambaASREncoder, SAMBA_M2),
        "speech_mamba_mamba2": (SpeechMambaEncoder, SPEECH_MAMBA_M2),
        "samba_asr_torchnorm": (SambaASREncoder, SAMBA),
        "samba_asr_composed": (SambaASREncoder, SAMBA),
        "samba_asr_merged": (SambaASREncoder, SAMBA),
        "samba_asr_wide": (SambaASREncoder, SAMBA_WIDE),
        "samba_asr_graphed": (SambaASREncoder, SAMBA),
        "speech_mamba_graphed": (SpeechMambaEncoder, SPEECH_MAMBA),
        # fewer, wider blocks and graphs for the short lengths
        "samba_asr_wide_graphed": (SambaASREncoder, SAMBA_WIDE),
        # the mamba2 mixer (SSD: matmul-based chunked scan) graphed
        "samba_asr_mamba2_graphed": (SambaASREncoder, SAMBA_M2),
        "speech_mamba_mamba2_graphed": (SpeechMambaEncoder, SPEECH_MAMBA_M2),
    }


def variant(name) -> tuple[float, dict]:
    """(the longest length (s) a model variant is run to, the execution options it runs with:
    modules/execution.py; none for the shipped defaults).

    *_torchnorm: every RMSNorm on torch's op instead of mamba-ssm's triton kernel (which costs
    more host time per call), up to 60 s; *_composed: v1 mixers without mamba_inner_fn
    (``fused_kernels: false``: less host time, more memory), *_merged: both directions
    of a bidirectional layer in one grouped scan (``merge_directions: always``), and *_graphed:
    training steps as CUDA graphs (``cuda_graphs: true``), up to 300 s."""
    options = {}
    if name.endswith("_torchnorm"):
        options["norm_kernel_min_numel"] = 1 << 62
    if name.endswith("_composed"):
        options.update(fused_kernels=False, merge_directions="never")
    if name.endswith("_merged"):
        options["merge_directions"] = "always"
    if name.endswith("_graphed"):
        options["cuda_graphs"] = True
    longest = (60 if name.endswith("_torchnorm") else 300 if options else math.inf)
    return longest, options


def build(name, tiny, recompute_input_layer=False, **extra):
    """``recompute_input_layer``: our encoders' option of that name (ESPnet's have none)."""
    cls, conf = model_table()[name]
    conf = {**conf, **extra}
    if recompute_input_layer and cls.__module__.startswith("espnet_mamba."):
        conf["recompute_input_layer"] = True
    if tiny:
        conf.update(TINY)
        if "linear_units" in conf:
            conf["linear_units"] = 128
        if "cgmlp_linear_units" in conf:
            conf["cgmlp_linear_units"] = 128
        if conf.get("mixer") == "mamba2":
            conf.update(d_state=16, mixer_conf={"headdim": 16})
    enc = cls(FEATS, **conf)
    options = variant(name)[1]
    if options:  # what the name asks for (the execution options are not in ESPnet's encoders)
        set_execution(enc, **options)
        conf["execution"] = options
    return enc, conf


class Timer:
    """Median wall time of a callable: CUDA events on GPU, perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn, warmup, repeats):
        for _ in range(warmup):
            fn()
        self.sync()
        return [self.once(fn) for _ in range(repeats)]

    def once(self, fn) -> float:
        """ms of one fn() (after what was queued before it has finished)."""
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)


def autocast(device, amp, cache_enabled=True):
    if amp == "none":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp],
                          cache_enabled=cache_enabled)


def step_fn(enc, x, ilens, mode, device, amp):
    """One training step (forward + backward) or one inference forward."""
    if mode == "infer":
        def run():
            with torch.no_grad(), autocast(device, amp):
                enc(x, ilens)
        return run

    def run():
        enc.zero_grad(set_to_none=True)  # as ESPnet's trainer (and the graphed variants need)
        with autocast(device, amp):  # with its weight cache, as in ESPnet's trainer
            y, _, _ = enc(x, ilens)
        y.float().square().mean().backward()
    return run


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(enc, mode, batch, seconds, device, args, timer):
    """One setting -> dict with times (ms), median, peak memory (GiB), or the error."""
    frames = int(seconds * FPS)
    enc.train(mode == "train")
    res = {"mode": mode, "batch": batch, "seconds": seconds, "frames": frames}
    try:
        free(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            # what is allocated before the setting starts (weights; more would mean leftovers of
            # an earlier setting, e.g. an out-of-memory one, inflating this setting's peak)
            res["resident_gib"] = torch.cuda.memory_allocated() / 2**30
        x = torch.randn(batch, frames, FEATS, device=device)
        ilens = torch.full((batch,), frames, dtype=torch.long, device=device)
        graphed = is_graphed(enc)
        fn = step_fn(enc, x, ilens, mode, device, args.amp)
        timer(fn, warmup_runs(enc, args), 0)
        if device.type == "cuda":
            # the peak with the warm-up (a graphed variant's capture is there), then the timed
            # runs' own peak: the steady state of a long training
            warm_peak = torch.cuda.max_memory_allocated()
            warm_reserved = torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()
        times = timer(fn, 0, args.repeats)
        res.update(times_ms=[round(t, 3) for t in times], median_ms=statistics.median(times))
        if device.type == "cuda":
            steady = torch.cuda.max_memory_allocated()
            res["peak_gib"] = max(warm_peak, steady) / 2**30
            res["steady_peak_gib"] = steady / 2**30
            # reserved by the caching allocator: a CUDA graph's memory pool is reserved and
            # written by its replays without being "allocated", so for the graphed variants
            # only this column holds their whole footprint (every model gets it, to compare)
            res["peak_reserved_gib"] = max(warm_reserved, torch.cuda.max_memory_reserved()) / 2**30
        if graphed:
            record_graphs(enc, res)
    except Exception as err:  # noqa: BLE001 - OOM is a result; anything else is reported too
        if not is_oom(err):
            raise
        res["error"] = "OOM"
    finally:
        enc.zero_grad(set_to_none=True)
        if is_graphed(enc):  # its graphs hold this setting's memory
            enc.training_graphs.clear()
        x = ilens = None
        free(device)
    return res


def record_graphs(enc, res):
    """What a graphed variant ran: graphs captured (0: every run was eager), a capture error."""
    graphs = enc.training_graphs
    res["graph_captures"] = graphs.captures
    if graphs.capture_error:
        res["graph_capture_error"] = graphs.capture_error
    if graphs.disabled:  # off since an earlier setting's failed capture (kept by clear())
        res["graphs_disabled"] = graphs.disabled


def profile_setting(enc, name, mode, batch, seconds, device, args, directory: Path):
    """torch.profiler over 3 steps of one setting, written to
    DIRECTORY/<model>_<mode>_B<batch>_<seconds>s.txt (see profile_run)."""
    frames = int(seconds * FPS)
    enc.train(mode == "train")
    x = torch.randn(batch, frames, FEATS, device=device)
    ilens = torch.full((batch,), frames, dtype=torch.long, device=device)
    profile_run(step_fn(enc, x, ilens, mode, device, args.amp), device,
                directory / f"{name}_{mode}_B{batch}_{seconds:g}s.txt",
                f"{name} {mode} B{batch} {seconds:g} s, amp {args.amp}")
    enc.zero_grad(set_to_none=True)
    free(device)


def profile_run(run, device, path: Path, title: str, steps: int = 3):
    """torch.profiler over ``steps`` calls of ``run`` (after 3 unprofiled ones): where the host
    time goes (ops by self CPU time), the kernels by device time, and per step the device's
    busy time and kernel count (busy time well below the step's wall time: the GPU waits)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    timer = Timer(device)
    timer.sync()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        timer.sync()
    avg = prof.key_averages()
    sort_dev = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    busy_ms = sum(e.device_time for e in kernels) / 1e3 / steps
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}, {steps} steps\n"
                    f"per step: device busy {busy_ms:.2f} ms, {len(kernels) / steps:.0f} "
                    f"device events (kernels, copies)\n\n== by self CPU time (host)\n"
                    + avg.table(sort_by="self_cpu_time_total", row_limit=45)
                    + "\n== by self device time\n" + avg.table(sort_by=sort_dev, row_limit=40))
    # the timeline too (chrome://tracing or perfetto: where the GPU waits for the host)
    trace = path.with_suffix(".trace.json")
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    trace.unlink()
    print(f"profile: {path} (device busy {busy_ms:.2f} ms per step)", flush=True)


def packed_vs_padded(args, device, timer, report):
    """Training step on one LibriSpeech-like batch, padded vs packed, same weights (dropout 0).

    One entry per model and packed path of the Mamba2 mixers (``--packed-paths``: see
    the execution option ``packed_mixer``), each with the padded run of its model."""
    from espnet2.asr.ctc import CTC

    scale = 0.1 if args.tiny else 1.0
    lengths = [int(s * FPS * scale) for s in PACKED_BATCH_S]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(len(lengths), max(lengths), FEATS, generator=gen).to(device)
    ilens = torch.tensor(lengths, device=device)
    vocab = 64 if args.tiny else 5000
    out = report.setdefault("packed", [])
    for name in args.packed_models:
        torch.manual_seed(0)  # the same weights in every run
        padded, conf = build(name, args.tiny, args.recompute_input_layer, dropout_rate=0.0)
        packed, _ = build(name, args.tiny, args.recompute_input_layer, dropout_rate=0.0,
                          pack_sequences=True)
        packed.load_state_dict(padded.state_dict())
        ctc = CTC(vocab, padded.output_size()).to(device)
        torch.manual_seed(1)
        ylens = torch.tensor([max(1, n // 40) for n in lengths], device=device)
        ys = torch.randint(1, vocab, (len(lengths), int(ylens.max())), device=device)

        def measure_one(enc, label):
            enc.to(device).train()

            def loss_fn(amp):
                # the CTC under autocast too, as ESPnet's trainer runs the whole model (its
                # projection in bf16, log-softmax and loss in fp32); hs.float(): ESPnet's CTC
                # casts its loss to hs's dtype, and a bf16 loss would keep 3 digits
                with autocast(device, amp):
                    hs, hlens, _ = enc(x, ilens)
                    return ctc(hs.float(), hlens, ys, ylens)

            last = {}

            def run():
                enc.zero_grad(set_to_none=True)
                loss = loss_fn(args.amp)
                loss.backward()
                last["loss"] = loss.detach()

            times = timer(run, args.warmup, args.repeats)
            if args.profile_dir:
                profile_run(run, device, args.profile_dir / f"packed_{name}_{label}.txt",
                            f"{name} {label} training step (packed batch), amp {args.amp}")
            # the training step's own loss (replayed from the graphs where they run), and the
            # loss of a no_grad forward (always eager) in fp32 and under autocast
            res = {"times_ms": [round(t, 3) for t in times],
                   "median_ms": statistics.median(times),
                   f"loss_train_step_{args.amp}": last["loss"].item()}
            with torch.no_grad():
                res.update({"loss_fp32": loss_fn("none").item(),
                            f"loss_{args.amp}": loss_fn(args.amp).item()})
            enc.zero_grad(set_to_none=True)
            enc.cpu()
            return res

        padded_res = measure_one(padded, "padded")
        for path in args.packed_paths:
            set_execution(packed, packed_mixer=path)
            packed_res = measure_one(packed, f"packed_{path}")
            entry = {"model": name, "conf": conf, "packed_path": path, "lengths_frames": lengths,
                     "padding_fraction": 1 - sum(lengths) / (len(lengths) * max(lengths)),
                     "padded": padded_res, "packed": packed_res,
                     "speedup": padded_res["median_ms"] / packed_res["median_ms"],
                     "loss_fp32_abs_diff": abs(padded_res["loss_fp32"]
                                               - packed_res["loss_fp32"]),
                     "loss_train_step_rel_diff": abs(
                         padded_res[f"loss_train_step_{args.amp}"]
                         - packed_res[f"loss_train_step_{args.amp}"])
                     / abs(padded_res[f"loss_train_step_{args.amp}"])}
            print(f"[packed] {name} ({path}): padded {padded_res['median_ms']:.1f} ms, packed "
                  f"{packed_res['median_ms']:.1f} ms ({entry['speedup']:.2f}x), fp32 loss "
                  f"{padded_res['loss_fp32']:.6f} vs {packed_res['loss_fp32']:.6f}, training "
                  f"step's loss rel. diff {entry['loss_train_step_rel_diff']:.1e}", flush=True)
            out.append(entry)
        del padded, packed
        free(device)


def environment(device):
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join(sys.argv), "python": platform.python_version(),
           "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    try:
        from importlib.metadata import version
        for pkg in ("espnet", "espnet-mamba", "mamba-ssm", "causal-conv1d", "triton"):
            try:
                env[pkg] = version(pkg)
            except Exception:  # noqa: BLE001
                env[pkg] = None
    except ImportError:
        pass
    from espnet_mamba.ops import backend
    env["kernels_available"] = backend.kernels_available()
    return env


def setting_parser(doc: str, models, lengths) -> argparse.ArgumentParser:
    """The options both encoder benchmarks take (this one and encoder_interleaved.py)."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", nargs="+", default=models)
    ap.add_argument("--lengths", nargs="+", type=float, default=lengths, help="seconds")
    ap.add_argument("--batches", nargs="+", type=int, default=[8, 1])
    ap.add_argument("--modes", nargs="+", default=["train", "infer"],
                    choices=["train", "infer"])
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "none"])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--tiny", action="store_true", help="tiny models: a smoke run on CPU")
    ap.add_argument("--recompute-input-layer", action="store_true",
                    help="our encoders with recompute_input_layer: true (the conv "
                         "subsampling's activations recomputed in the backward pass)")
    return ap


def parse_settings(ap, argv):
    args = ap.parse_args(argv)
    unknown = sorted(set(args.models) - set(model_table()))
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(model_table())}")
    return args


def warmup_runs(enc, args) -> int:
    """A graphed variant captures a shape the second time it sees it: never time those."""
    return max(args.warmup, 2) if is_graphed(enc) else args.warmup


def is_graphed(enc) -> bool:
    return getattr(enc, "training_graphs", None) is not None


def result_line(res) -> str:
    shown = f"{res['median_ms']:9.1f} ms" if "median_ms" in res else res["error"]
    mem = f"  {res['peak_gib']:6.2f} GiB" if "peak_gib" in res else ""
    return (f"{res['model']:20s} {res['mode']:5s} B{res['batch']} {res['seconds']:6.0f} s  "
            f"{shown}{mem}")


def main(argv=None):
    ap = setting_parser(__doc__, DEFAULT_MODELS, LENGTHS_S)
    ap.add_argument("--max-batched-seconds", type=float, default=300,
                    help="batches > 1 only up to this length (longer: batch 1 only)")
    ap.add_argument("--packed", action="store_true", help="also run the packed-vs-padded batch")
    ap.add_argument("--packed-only", action="store_true")
    ap.add_argument("--packed-models", nargs="+",
                    default=["samba_asr_mamba2"], help="models with Mamba2 mixers to pack")
    ap.add_argument("--packed-paths", nargs="+", default=None,
                    choices=("padded", "fused", "unfused"),
                    help="packed paths of the Mamba2 mixers to time (padded, fused, unfused; "
                         "default: the shipped one, the execution option packed_mixer)")
    ap.add_argument("--max-seconds-per-model", type=float, default=math.inf,
                    help="stop a model's remaining settings after this much wall time")
    ap.add_argument("--profile-dir", type=Path, default=None,
                    help="also profile (torch.profiler) each model's train and infer steps at "
                         "--profile-setting, and the packed batch's padded and packed "
                         "training steps, into this folder")
    ap.add_argument("--profile-setting", nargs=2, type=float, default=[8, 15],
                    metavar=("BATCH", "SECONDS"))
    args = parse_settings(ap, argv)
    if args.packed_paths is None:
        args.packed_paths = [Execution().packed_mixer]
    device = torch.device(args.device)
    timer = Timer(device)
    report = {"environment": environment(device), "settings": vars(args) | {"out": str(args.out)},
              "models": {}, "results": []}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))

    if not args.packed_only:
        for name in args.models:
            enc, conf = build(name, args.tiny, args.recompute_input_layer)
            enc.to(device)
            params = sum(p.numel() for p in enc.parameters())
            report["models"][name] = {"params": params, "class": type(enc).__name__,
                                      "conf": conf}
            print(f"== {name}: {params / 1e6:.2f}M parameters", flush=True)
            t_model = time.time()
            max_s = variant(name)[0]
            for mode in args.modes:
                if mode == "infer" and name.endswith("_graphed"):
                    continue  # graphs for training steps only: infer would be the plain encoder
                for batch in args.batches:
                    failed_at = None
                    lengths = [s for s in sorted(args.lengths)
                               if (batch == 1 or s <= args.max_batched_seconds)
                               and s <= max_s]
                    for seconds in lengths:
                        if failed_at is not None:
                            res = {"mode": mode, "batch": batch, "seconds": seconds,
                                   "error": f"skipped (OOM at {failed_at} s)"}
                        elif time.time() - t_model > args.max_seconds_per_model:
                            res = {"mode": mode, "batch": batch, "seconds": seconds,
                                   "error": "skipped (time budget of the model)"}
                        else:
                            res = measure(enc, mode, batch, seconds, device, args, timer)
                            if res.get("error") == "OOM":
                                failed_at = seconds
                        res["model"] = name
                        report["results"].append(res)
                        save()
                        print(result_line(res), flush=True)
            if args.profile_dir:
                b, sec = args.profile_setting
                for mode in args.modes:
                    try:
                        profile_setting(enc, name, mode, int(b), sec, device, args,
                                        args.profile_dir)
                    except Exception as err:  # noqa: BLE001 - an OOM here loses no results
                        if not is_oom(err):
                            raise
                        print(f"profile {name} {mode}: OOM", flush=True)
                        enc.zero_grad(set_to_none=True)
                        free(device)
            del enc
            free(device)
    if args.packed or args.packed_only:
        packed_vs_padded(args, device, timer, report)
        save()
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
