"""Stream an hour of audio through a causal Samba-ASR model, on one CPU thread or a GPU: memory stays flat.

An untrained model with the mini recipe's sizes (egs2/mini_synth/asr1/conf/train_asr.yaml:
80 log-mel bins, conv2d subsampling, 4 blocks of d128, d_state 8, ``bidirectional: false``;
``normalize: global_mvn``) is built by ESPnet's ``ASRTask``.  Synthetic 16 kHz audio is made
chunk by chunk (never held whole) and fed in 320 ms chunks through
:class:`~espnet_mamba.integration.streaming_inference.StreamingFrontend`,
:class:`~espnet_mamba.encoders.streaming.StreamingEncoder` and the CTC best path (greedy,
counting tokens instead of keeping them).

What it shows: the streaming path holds a fixed-size state (the STFT's pending samples, the
subsampling's pending frames, each layer's recurrent state), so the process's resident memory
after an hour equals that after a minute; and the per-chunk time, far below the chunk's 320 ms.

    python benchmarks/streaming_memory.py                   # one hour, 1 thread
    python benchmarks/streaming_memory.py --minutes 2 --json

With ``--speech2text`` the chunks go through ``Speech2TextStreaming`` instead (the final beam
search included), with ``max_utterance_seconds`` bounding the encoder frames it keeps for that
search: every so many seconds the utterance is finalised and a new one starts.

Resident memory is VmRSS of /proc/self/status (torch allocates outside tracemalloc's view).
With ``--device cuda`` the model runs on the GPU (the chunks arrive as host arrays, as from a
microphone): the per-chunk time then includes the copy and a synchronisation, and the memory
that must stay flat is the GPU's (``torch.cuda.memory_allocated``, also the reserved peak).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SAMPLE_RATE = 16000
TOKENS = ["<blank>", "<unk>", *"abcdefghijklmnopqrstuvwxyz'", "<space>", "<sos/eos>"]
# egs2/mini_synth/asr1/conf/train_asr.yaml, dropout off (decoding), causal
FRONTEND_CONF = {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80}
ENCODER_CONF = {"output_size": 128, "num_blocks": 4, "d_state": 8, "d_conv": 4, "expand": 2,
                "dropout_rate": 0.0, "input_layer": "conv2d", "bidirectional": False}
DECODER_CONF = {"num_blocks": 2, "d_state": 8, "d_conv": 4, "expand": 2, "dropout_rate": 0.0}


def rss_mib() -> float:
    """Current resident set size of this process, MiB (VmRSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def build_model(out_dir: Path, seed: int = 0):
    """An untrained causal ASR model, its config.yaml and model.pth written to ``out_dir``."""
    import numpy as np
    import torch
    import yaml
    from espnet2.tasks.asr import ASRTask

    token_file, stats = out_dir / "tokens.txt", out_dir / "feats_stats.npz"
    token_file.write_text("".join(t + "\n" for t in TOKENS))
    # statistics of log-mel features of noise at this level (mean ~ -5, std ~ 2)
    n = 1000
    np.savez(stats, count=np.array(n), sum=np.full(80, -5.0 * n),
             sum_square=np.full(80, (25.0 + 4.0) * n))
    cli = ["--token_list", str(token_file), "--token_type", "char",
           "--encoder", "samba_asr", "--decoder", "samba_asr",
           "--model_conf", "ctc_weight=0.3", "--normalize", "global_mvn",
           "--normalize_conf", f"stats_file={stats}"]
    for flag, conf in (("--encoder_conf", ENCODER_CONF), ("--decoder_conf", DECODER_CONF),
                       ("--frontend_conf", FRONTEND_CONF)):
        for key, value in conf.items():
            cli += [flag, f"{key}={value}"]
    args = ASRTask.get_parser().parse_args(cli)
    torch.manual_seed(seed)
    model = ASRTask.build_model(args).eval()
    config, weights = out_dir / "config.yaml", out_dir / "model.pth"
    config.write_text(yaml.safe_dump(dict(vars(args), token_list=list(TOKENS)),
                                     sort_keys=False))
    torch.save(model.state_dict(), weights)
    return model, config, weights


def synthetic_chunk(rng, start: int, size: int):
    """``size`` samples from sample ``start`` on: noise with a 200-600 Hz tone that comes and
    goes every second (so the features move), made without the rest of the stream."""
    import numpy as np

    t = (start + np.arange(size)) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * (200 + 400 * ((t // 1.0) % 2)) * t) * ((t % 1.0) < 0.6)
    return (0.05 * rng.standard_normal(size) + 0.2 * tone).astype(np.float32)


def measure(minutes: float, chunk_ms: float = 320, threads: int = 1, seed: int = 0,
            speech2text: bool = False, max_utterance_seconds: float = 20.0,
            device: str = "cpu") -> dict:
    import numpy as np
    import torch

    from espnet_mamba.encoders.streaming import StreamingEncoder
    from espnet_mamba.integration.streaming_inference import StreamingFrontend

    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory()
    model, config, weights = build_model(Path(tmp.name), seed)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    def gpu_mib():
        return torch.cuda.memory_allocated(device) / 2**20 if cuda else 0.0

    if speech2text:
        import logging

        from espnet_mamba.integration.streaming_inference import Speech2TextStreaming

        # an untrained decoder runs to maxlenratio each time; its warning says nothing here
        logging.getLogger("espnet2").setLevel(logging.ERROR)

        s2t = Speech2TextStreaming(config, weights, beam_size=3, ctc_weight=0.3,
                                   lm_weight=0.0, maxlenratio=0.05,
                                   max_utterance_seconds=max_utterance_seconds, device=device)
        model = s2t.asr_model
    else:  # (Speech2TextStreaming loads its own copy onto the device)
        model = model.to(device)
        frontend, encoder = StreamingFrontend(model), StreamingEncoder(model.encoder)
    chunk = round(chunk_ms * SAMPLE_RATE / 1000)
    total = int(minutes * 60 * SAMPLE_RATE)
    n_chunks = -(-total // chunk)
    seconds = np.zeros(n_chunks)  # allocated up front: the measurement does not grow either
    rss = {}
    rng = np.random.default_rng(seed)
    blank, last_label, tokens, frames, utterances, state = model.blank_id, None, 0, 0, 0, 0
    minute_mark = min(n_chunks - 1, int(60 * SAMPLE_RATE) // chunk)
    with torch.no_grad():
        for k in range(n_chunks):
            start = k * chunk
            wav = synthetic_chunk(rng, start, min(chunk, total - start))
            final = k == n_chunks - 1
            t0 = time.perf_counter()
            if speech2text:
                s2t(wav, is_final=final)
                utterances += len(s2t.finished) + final
            else:
                enc = encoder(frontend(wav, is_final=final), is_final=final)
                if len(enc):
                    labels = model.ctc.argmax(enc[None])[0].tolist()
                    frames += len(labels)
                    for label in labels:
                        if label != blank and label != last_label:
                            tokens += 1
                        last_label = label
            sync()
            seconds[k] = time.perf_counter() - t0
            if not final and not speech2text:
                state = max(state, frontend.state_numel() + encoder.state_numel())
            if k == minute_mark:
                rss["after_1_minute_mib"] = rss_mib()
                rss["gpu_after_1_minute_mib"] = gpu_mib()
    rss["at_end_mib"] = rss_mib()
    rss["gpu_at_end_mib"] = gpu_mib()
    tmp.cleanup()
    audio_seconds = total / SAMPLE_RATE
    ms = seconds * 1000
    row = {
        "path": "Speech2TextStreaming" if speech2text else "frontend+encoder+ctc_greedy",
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "minutes": minutes, "chunk_ms": chunk_ms, "chunks": n_chunks, "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "encoder": ENCODER_CONF, "params": sum(p.numel() for p in model.parameters()),
        "rss_after_1_minute_mib": round(rss["after_1_minute_mib"], 1),
        "rss_at_end_mib": round(rss["at_end_mib"], 1),
        "rss_growth_percent": round(100 * (rss["at_end_mib"] / rss["after_1_minute_mib"] - 1),
                                    2),
        "chunk_ms_median": round(float(np.median(ms)), 2),
        "chunk_ms_p99": round(float(np.percentile(ms, 99)), 2),
        "chunk_ms_max": round(float(ms.max()), 2),
        "rtf": round(float(seconds.sum()) / audio_seconds, 4),
    }
    if cuda:
        row.update(
            gpu_allocated_after_1_minute_mib=round(rss["gpu_after_1_minute_mib"], 2),
            gpu_allocated_at_end_mib=round(rss["gpu_at_end_mib"], 2),
            gpu_max_reserved_mib=round(torch.cuda.max_memory_reserved(device) / 2**20, 1))
    if speech2text:
        row.update(max_utterance_seconds=max_utterance_seconds, utterances=utterances)
    else:
        row.update(encoder_frames=frames, ctc_tokens=tokens, max_state_elements=state)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--chunk_ms", type=float, default=320.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speech2text", action="store_true",
                   help="through Speech2TextStreaming (final beam searches included)")
    p.add_argument("--max_utterance_seconds", type=float, default=20.0,
                   help="with --speech2text: finalise an utterance after this long")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    row = measure(args.minutes, args.chunk_ms, args.threads, speech2text=args.speech2text,
                  max_utterance_seconds=args.max_utterance_seconds, device=args.device)
    if args.json:
        print(json.dumps(row))
        return
    for key, value in row.items():
        print(f"{key:>24}: {value}")
    ok = abs(row["rss_growth_percent"]) <= 5 and row["rtf"] <= 0.3
    print(f"{'targets':>24}: {'met' if ok else 'NOT met'} (memory within 5 % of the 1-minute "
          "value, RTF <= 0.3)")


if __name__ == "__main__":
    main()
