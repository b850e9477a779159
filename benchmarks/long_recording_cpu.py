"""Decode a long recording on a CPU through ESPnet's own ``Speech2Text``: wall time and peak memory.

An untrained model (built by ESPnet's ``ASRTask`` from a config dict, default fbank front-end,
conv2d subsampling, our encoder and decoder) decodes random 16 kHz audio with joint CTC/attention
beam search.  The output of an untrained model is noise, so ``maxlenratio`` bounds its length.

What it shows: the PyTorch path holds the recording at frame resolution only as features and
encoder outputs; the scans never build a (batch, d_inner, frames, d_state) tensor (the windowed
v1 scan computes about a million state numbers at a time in reused buffers).  Peak memory of a 20-minute decode is
compared with a 5-minute one: it must grow roughly like the feature / encoder-output sizes, not
like T * d_inner * d_state.

    python benchmarks/long_recording_cpu.py --minutes 20            # one decode, one process
    python benchmarks/long_recording_cpu.py --compare 5,20          # each length in a subprocess
    python benchmarks/long_recording_cpu.py --minutes 2 --json      # machine-readable (CI test)

Peak memory is the process's VmHWM (torch allocates outside tracemalloc's view), taken
before the decode (model built, audio in memory) and after it; each length runs in a fresh
process so that the peaks do not mix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE_RATE = 16000
TOKENS = ["<blank>", "<unk>", *"abcdefghijklmnopqrstuvwxyz'", "<space>", "<sos/eos>"]
FRONTEND_CONF = {"n_fft": 512, "hop_length": 160, "n_mels": 80}  # 100 frames/s
# "small-ish": ~1.3M parameters with samba_asr/samba_asr
MODEL_CONF = {
    "samba_asr": {"output_size": 128, "num_blocks": 6, "d_state": 16, "dropout_rate": 0.0},
    "speech_mamba": {"output_size": 128, "num_blocks": 3, "attention_heads": 4, "d_state": 16,
                     "dropout_rate": 0.0},
}
# --tiny (the CI stand-in): a few seconds of encoder work per minute of audio
TINY_CONF = {"output_size": 32, "num_blocks": 2, "d_state": 8, "dropout_rate": 0.0}
TINY_DECODER_CONF = {"num_blocks": 1, "d_state": 8, "dropout_rate": 0.0}
DECODER_CONF = {
    "samba_asr": {"num_blocks": 2, "d_state": 16, "dropout_rate": 0.0},
    "speech_mamba": {"num_blocks": 1, "attention_heads": 4, "d_state": 16, "dropout_rate": 0.0},
}


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's own memory.
    ru_maxrss is not used there: it survives fork+exec, so a process started by a big parent
    (pytest after many tests) would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build_model_files(out_dir, encoder="samba_asr", decoder="samba_asr", encoder_conf=None,
                      decoder_conf=None, seed=0, tokens=None, token_type="char"):
    """Write config.yaml + model.pth of an untrained ASR model built by ESPnet's ASRTask
    (``tokens``: the token list, by default this benchmark's characters)."""
    import torch
    import yaml
    from espnet2.tasks.asr import ASRTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    token_file = out_dir / "tokens.txt"
    tokens = list(tokens or TOKENS)
    token_file.write_text("".join(t + "\n" for t in tokens))
    cli = ["--token_list", str(token_file), "--token_type", token_type,
           "--encoder", encoder, "--decoder", decoder,
           "--model_conf", "ctc_weight=0.3"]
    for key, value in (encoder_conf or MODEL_CONF[encoder]).items():
        cli += ["--encoder_conf", f"{key}={value}"]
    for key, value in (decoder_conf or DECODER_CONF[decoder]).items():
        cli += ["--decoder_conf", f"{key}={value}"]
    for key, value in FRONTEND_CONF.items():
        cli += ["--frontend_conf", f"{key}={value}"]
    args = ASRTask.get_parser().parse_args(cli)
    torch.manual_seed(seed)
    model = ASRTask.build_model(args)
    config = dict(vars(args), token_list=tokens)
    config_file, model_file = out_dir / "config.yaml", out_dir / "model.pth"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save(model.state_dict(), model_file)
    n_params = sum(p.numel() for p in model.parameters())
    return config_file, model_file, n_params


def measure(minutes: float, encoder="samba_asr", decoder="samba_asr", beam=3, ctc_weight=0.3,
            maxlenratio=0.002, seed=0, threads=None, tiny=False) -> dict:
    import numpy as np
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        confs = (dict(TINY_CONF, **({"attention_heads": 2} if encoder == "speech_mamba" else {})),
                 dict(TINY_DECODER_CONF, **({"attention_heads": 2} if decoder == "speech_mamba"
                                            else {}))) if tiny else (None, None)
        config, model, n_params = build_model_files(tmp, encoder, decoder, *confs, seed=seed)
        s2t = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu",
                          beam_size=beam, ctc_weight=ctc_weight, lm_weight=0.0,
                          maxlenratio=maxlenratio, minlenratio=0.0, nbest=1)
    speech = (0.1 * np.random.default_rng(seed).standard_normal(
        int(minutes * 60 * SAMPLE_RATE))).astype(np.float32)

    enc = {}

    def pre(module, inputs):
        enc["frames"] = int(inputs[0].shape[1])
        enc["rss_in"] = rss_mib()  # after the front-end
        enc["t0"] = time.perf_counter()

    def post(module, inputs, output):
        enc["seconds"] = time.perf_counter() - enc["t0"]
        enc["out_frames"] = int(output[0].shape[1])
        enc["rss_out"] = rss_mib()

    s2t.asr_model.encoder.register_forward_pre_hook(pre)
    s2t.asr_model.encoder.register_forward_hook(post)
    before = rss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        results = s2t(speech)
    wall = time.perf_counter() - start
    text, tokens, token_ids, hyp = results[0]
    return {
        "minutes": minutes, "encoder": encoder, "decoder": decoder, "tiny": tiny,
        "params": n_params,
        "beam": beam, "ctc_weight": ctc_weight, "maxlenratio": maxlenratio,
        "threads": torch.get_num_threads(), "samples": len(speech),
        "feature_frames": enc["frames"], "encoder_frames": enc["out_frames"],
        "encoder_seconds": round(enc["seconds"], 2), "wall_seconds": round(wall, 2),
        "search_seconds": round(wall - enc["seconds"], 2),
        "hyp_tokens": len(token_ids), "text": text,
        "rss_before_decode_mib": round(before, 1),
        "peak_rss_after_frontend_mib": round(enc["rss_in"], 1),
        "peak_rss_after_encoder_mib": round(enc["rss_out"], 1),
        "peak_rss_mib": round(rss_mib(), 1),
    }


def compare(lengths, args) -> list:
    rows = []
    for minutes in lengths:
        cmd = [sys.executable, __file__, "--minutes", str(minutes), "--json",
               "--encoder", args.encoder, "--decoder", args.decoder, "--beam", str(args.beam),
               "--ctc_weight", str(args.ctc_weight), "--maxlenratio", str(args.maxlenratio),
               "--merge-directions", args.merge_directions,
               *(["--tiny"] if args.tiny else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for row in rows[1:]:
        grow = row["peak_rss_mib"] - row["rss_before_decode_mib"]
        grow0 = base["peak_rss_mib"] - base["rss_before_decode_mib"]
        print(f"{row['minutes']} min vs {base['minutes']} min: decode memory "
              f"{grow:.0f} MiB vs {grow0:.0f} MiB (x{grow / max(grow0, 1):.2f} for "
              f"x{row['minutes'] / base['minutes']:.1f} audio)")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--compare", help="comma-separated lengths in minutes, one process each")
    p.add_argument("--encoder", default="samba_asr", choices=sorted(MODEL_CONF))
    p.add_argument("--decoder", default="samba_asr", choices=sorted(DECODER_CONF))
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--ctc_weight", type=float, default=0.3)
    p.add_argument("--maxlenratio", type=float, default=0.002,
                   help="max output length / encoder frames (bounds the untrained output)")
    p.add_argument("--tiny", action="store_true", help="a tiny model (the CI stand-in)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--merge-directions", choices=["auto", "never"], default="auto",
                   help="the execution option merge_directions: 'never' runs the two "
                        "directions of a bidirectional v1 layer as two scans")
    args = p.parse_args()
    if args.merge_directions != "auto":  # the run-time override of modules/execution.py
        os.environ["ESPNET_MAMBA_EXECUTION"] = f"merge_directions={args.merge_directions}"
    if args.compare:
        compare([float(x) for x in args.compare.split(",")], args)
        return
    row = measure(args.minutes, args.encoder, args.decoder, args.beam, args.ctc_weight,
                  args.maxlenratio, tiny=args.tiny)
    row["merge_directions"] = args.merge_directions
    if args.json:
        print(json.dumps(row))
    else:
        for key, value in row.items():
            print(f"{key:>24}: {value}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
