"""samba_asr encoder vs ESPnet's Conformer on a CPU (PyTorch path): training-step peak memory,
30 s encoder forward time and 30 s ``Speech2Text`` decode time, side by side, with ratios.

    python benchmarks/cpu_encoder_vs_conformer.py                 # all three, ~5 min on 2 cores
    python benchmarks/cpu_encoder_vs_conformer.py --parts train   # one part: train, forward, decode
    python benchmarks/cpu_encoder_vs_conformer.py --json out.json

Models: a 12-block d256 samba_asr encoder (bidirectional Mamba, d_state 16, expand 2) and a 12-block
d256 ESPnet ConformerEncoder (4 heads, macaron, rel-pos attention, conv module 31) whose
feed-forward width (``--conformer-units``) makes its parameter count equal to the Mamba encoder's;
both printed.  Inputs are random fbank-like features: 80 dims, 100 frames/s.

- train: one forward + backward of a (16 x 10 s) batch, in a fresh subprocess per model (nothing
  else in it); peak memory is that process's resident high-water mark (VmHWM, which is ru_maxrss
  without what a parent leaves to its child), and the model-only mark before the step.
- forward: 30 s, batch 1, ``torch.no_grad``, eval mode; the models alternate run by run in one
  process (so that load from other programs on the machine hits both alike); median, and the
  fastest run (the least disturbed one on a shared machine).
- decode: ESPnet's ``Speech2Text`` (default fbank front-end, joint CTC/attention beam search) on
  30 s of random audio, an untrained model of each encoder with the same decoder (ESPnet's
  transformer decoder), so the encoder is the only difference; ``maxlenratio`` bounds the
  length of an untrained model's output.  Alternating runs in one process, median.

Timings use ``torch.set_num_threads(--threads)`` (2 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FEATS, FPS, SAMPLE_RATE = 80, 100, 16000
SAMBA = dict(output_size=256, num_blocks=12, d_state=16, expand=2, input_layer="conv2d",
             backend="torch")
# linear_units 328: the same parameter count as SAMBA (12.35M) to within 0.1%
CONFORMER = dict(output_size=256, attention_heads=4, num_blocks=12, input_layer="conv2d",
                 macaron_style=True, rel_pos_type="latest", pos_enc_layer_type="rel_pos",
                 selfattention_layer_type="rel_selfattn", activation_type="swish",
                 use_cnn_module=True, cnn_module_kernel=31)
DECODER = dict(num_blocks=3, linear_units=1024, attention_heads=4, dropout_rate=0.0)
TOKENS = ["<blank>", "<unk>", *"abcdefghijklmnopqrstuvwxyz'", "<space>", "<sos/eos>"]
MODELS = ("conformer", "samba_asr")


def peak_rss_gib() -> float:
    """This process's resident high-water mark, GiB (VmHWM; ru_maxrss where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build_encoder(name, units):
    if name == "samba_asr":
        from espnet_mamba.encoders.samba_asr import SambaASREncoder

        return SambaASREncoder(FEATS, **SAMBA)
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    return ConformerEncoder(FEATS, linear_units=units, **CONFORMER)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_step(name, units, batch, seconds, threads) -> dict:
    """Run in a fresh subprocess: one training step, its peak RSS."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_encoder(name, units).train()
    frames = int(seconds * FPS)
    x = torch.randn(batch, frames, FEATS)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    before = peak_rss_gib()
    start = time.perf_counter()
    out, out_lengths, _ = model(x, lengths)
    out.square().mean().backward()
    step = time.perf_counter() - start
    return {"model": name, "params": n_params(model), "peak_gib": round(peak_rss_gib(), 2),
            "before_step_gib": round(before, 2), "step_s": round(step, 1),
            "out_frames": int(out.shape[1])}


def forward_times(units, seconds, runs, threads) -> dict:
    import torch

    torch.set_num_threads(threads)
    models = {m: build_encoder(m, units).eval() for m in MODELS}
    frames = int(seconds * FPS)
    x, lengths = torch.randn(1, frames, FEATS), torch.tensor([frames])
    times = {m: [] for m in MODELS}
    with torch.no_grad():
        for r in range(runs + 1):  # the first round warms up
            for m, model in models.items():
                start = time.perf_counter()
                model(x, lengths)
                if r:
                    times[m].append(time.perf_counter() - start)
    return {m: {"params": n_params(models[m]), "median_s": round(statistics.median(t), 3),
                "min_s": round(min(t), 3), "runs": len(t)} for m, t in times.items()}


def build_speech2text(out_dir, encoder, units, beam, maxlenratio):
    import torch
    import yaml
    from espnet2.bin.asr_inference import Speech2Text
    from espnet2.tasks.asr import ASRTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    token_file = out_dir / "tokens.txt"
    token_file.write_text("".join(t + "\n" for t in TOKENS))
    conf = ({k: v for k, v in SAMBA.items()} if encoder == "samba_asr"
            else dict(CONFORMER, linear_units=units))
    cli = ["--token_list", str(token_file), "--token_type", "char", "--encoder", encoder,
           "--decoder", "transformer", "--model_conf", "ctc_weight=0.3",
           "--frontend_conf", "n_fft=512", "--frontend_conf", "hop_length=160",
           "--frontend_conf", "n_mels=80"]
    for key, value in conf.items():
        cli += ["--encoder_conf", f"{key}={value}"]
    for key, value in DECODER.items():
        cli += ["--decoder_conf", f"{key}={value}"]
    args = ASRTask.get_parser().parse_args(cli)
    torch.manual_seed(0)
    model = ASRTask.build_model(args)
    config, weights = out_dir / "config.yaml", out_dir / "model.pth"
    config.write_text(yaml.safe_dump(dict(vars(args), token_list=list(TOKENS)), sort_keys=False))
    torch.save(model.state_dict(), weights)
    s2t = Speech2Text(asr_train_config=config, asr_model_file=weights, device="cpu",
                      beam_size=beam, ctc_weight=0.3, lm_weight=0.0, maxlenratio=maxlenratio,
                      minlenratio=0.0, nbest=1)
    return s2t, n_params(model), n_params(model.encoder)


def decode_times(units, seconds, runs, threads, beam, maxlenratio) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    speech = (0.1 * np.random.default_rng(0).standard_normal(
        int(seconds * SAMPLE_RATE))).astype(np.float32)
    s2t, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in MODELS:
            s2t[m], total, enc = build_speech2text(Path(tmp) / m, m, units, beam, maxlenratio)
            sizes[m] = {"params": total, "encoder_params": enc}
    enc_start, enc_times = {}, {m: [] for m in MODELS}
    for m in MODELS:  # the encoder's share of each decode
        encoder = s2t[m].asr_model.encoder
        encoder.register_forward_pre_hook(
            lambda mod, inp, m=m: enc_start.__setitem__(m, time.perf_counter()))
        encoder.register_forward_hook(
            lambda mod, inp, out, m=m: enc_times[m].append(time.perf_counter() - enc_start[m]))
    times, tokens = {m: [] for m in MODELS}, {}
    with torch.no_grad():
        for r in range(runs + 1):
            for m in MODELS:
                start = time.perf_counter()
                tokens[m] = len(s2t[m](speech)[0][2])
                if r:
                    times[m].append(time.perf_counter() - start)
    return {m: {**sizes[m], "median_s": round(statistics.median(t), 3),
                "min_s": round(min(t), 3), "runs": len(t), "hyp_tokens": tokens[m],
                "encoder_median_s": round(statistics.median(enc_times[m][1:]), 3)}
            for m, t in times.items()}


def ratio(rows, key):
    return round(rows["samba_asr"][key] / rows["conformer"][key], 2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="train,forward,decode")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--conformer-units", type=int, default=328,
                   help="the Conformer's linear_units (328: the samba_asr encoder's parameters)")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-seconds", type=float, default=10.0)
    p.add_argument("--train-runs", type=int, default=3, help="fresh processes per model")
    p.add_argument("--seconds", type=float, default=30.0, help="forward and decode length")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--decode-runs", type=int, default=5)
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--maxlenratio", type=float, default=0.02,
                   help="max output tokens / encoder frames (30 s: 15 tokens)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--_train-one", help=argparse.SUPPRESS)
    args = p.parse_args()
    units = args.conformer_units
    if args._train_one:  # the subprocess of one model's training step
        print(json.dumps(train_step(args._train_one, units, args.train_batch,
                                    args.train_seconds, args.threads)))
        return

    parts = args.parts.split(",")
    report = {"host": f"{platform.processor() or platform.machine()}, "
                      f"{os.cpu_count()} CPUs", "threads": args.threads,
              "conformer_units": units}
    if "train" in parts:
        runs = {m: [] for m in MODELS}
        for _ in range(args.train_runs):
            for m in MODELS:  # one process at a time: peaks must not add up
                out = subprocess.run([sys.executable, __file__, "--_train-one", m,
                                      "--conformer-units", str(units),
                                      "--threads", str(args.threads),
                                      "--train-batch", str(args.train_batch),
                                      "--train-seconds", str(args.train_seconds)],
                                     capture_output=True, text=True, check=True)
                runs[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[m][-1]), flush=True)
        # the allocator's timing of returning memory moves a peak by a few tenths of a GiB from
        # run to run: the median run (by peak), and every run's peak
        rows = {m: dict(sorted(r, key=lambda x: x["peak_gib"])[(len(r) - 1) // 2],
                        peaks_gib=[x["peak_gib"] for x in r]) for m, r in runs.items()}
        report["train"] = {"batch": args.train_batch, "seconds": args.train_seconds, **rows,
                           "peak_ratio": ratio(rows, "peak_gib")}
    if "forward" in parts:
        rows = forward_times(units, args.seconds, args.runs, args.threads)
        report["forward"] = {"seconds": args.seconds, **rows,
                             "median_ratio": ratio(rows, "median_s"),
                             "min_ratio": ratio(rows, "min_s")}
        print(json.dumps(report["forward"]), flush=True)
    if "decode" in parts:
        rows = decode_times(units, args.seconds, args.decode_runs, args.threads, args.beam,
                            args.maxlenratio)
        report["decode"] = {"seconds": args.seconds, "beam": args.beam,
                            "maxlenratio": args.maxlenratio, **rows,
                            "median_ratio": ratio(rows, "median_s"),
                            "min_ratio": ratio(rows, "min_s")}
        print(json.dumps(report["decode"]), flush=True)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


def print_table(report):
    print(f"\n{report['host']}, torch threads {report['threads']}")
    print("| measurement | conformer | samba_asr | samba / conformer |")
    print("|---|---|---|---|")
    if "train" in report:
        t = report["train"]
        c, s = t["conformer"], t["samba_asr"]
        print(f"| encoder parameters | {c['params']:,} | {s['params']:,} | "
              f"{s['params'] / c['params']:.3f} |")
        print(f"| train step {t['batch']} x {t['seconds']:g} s: peak RSS GiB (median run) | "
              f"{c['peak_gib']} | {s['peak_gib']} | {t['peak_ratio']} |")
        print(f"| (peak RSS GiB of each run) | {c['peaks_gib']} | {s['peaks_gib']} | |")
        print(f"| (RSS before the step, GiB) | {c['before_step_gib']} | {s['before_step_gib']} | |")
        print(f"| (train step time, s) | {c['step_s']} | {s['step_s']} | "
              f"{s['step_s'] / c['step_s']:.2f} |")
    if "forward" in report:
        f = report["forward"]
        print(f"| encoder forward {f['seconds']:g} s, median s | {f['conformer']['median_s']} | "
              f"{f['samba_asr']['median_s']} | {f['median_ratio']} |")
        print(f"| (fastest run, s) | {f['conformer']['min_s']} | {f['samba_asr']['min_s']} | "
              f"{f['min_ratio']} |")
    if "decode" in report:
        d = report["decode"]
        print(f"| Speech2Text decode {d['seconds']:g} s (beam {d['beam']}), median s | "
              f"{d['conformer']['median_s']} | {d['samba_asr']['median_s']} | "
              f"{d['median_ratio']} |")
        print(f"| (fastest run, s) | {d['conformer']['min_s']} | {d['samba_asr']['min_s']} | "
              f"{d['min_ratio']} |")
        print(f"| (of which encoder, median s) | {d['conformer']['encoder_median_s']} | "
              f"{d['samba_asr']['encoder_median_s']} | "
              f"{d['samba_asr']['encoder_median_s'] / d['conformer']['encoder_median_s']:.2f} |")
        print(f"| (decode model parameters) | {d['conformer']['params']:,} | "
              f"{d['samba_asr']['params']:,} | |")


if __name__ == "__main__":
    main()
