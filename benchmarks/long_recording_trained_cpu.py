"""Decode one long recording of real (synthetic) speech with a trained model on a CPU, in one pass.

The audio of one or more Kaldi-style data directories (``wav.scp`` and ``text``, e.g. a recipe's
``dump/raw/test*``) is joined in order, with 0.3 s of silence between utterances, into one
recording of at least ``--minutes`` (every utterance once, then from the start again until it is
long enough); its reference is their texts joined.  ESPnet's own ``Speech2Text`` decodes it
with the options of a decode config (``conf/decode_asr.yaml``: beam, CTC weight...), without
segmentation.  Reported: wall time, the encoder's share, real-time factor, peak resident memory,
words in the hypothesis against the reference, WER, and whether the plugin's early-stop warning
fired (the hypothesis ended far before the CTC best path).

    python benchmarks/long_recording_trained_cpu.py --minutes 20 \\
        --asr_train_config exp/asr/config.yaml --asr_model_file exp/asr/valid.acc.ave.pth \\
        --decode_config conf/decode_asr.yaml --data dump/raw/test_120s dump/raw/test --json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from long_recording_cpu import rss_mib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from join_utterances import read_table  # the Kaldi-table reader of the recipes' tools

SAMPLE_RATE = 16000
PAUSE_SECONDS = 0.3


def read_data_dir(d: Path) -> list[tuple[str, str, str]]:
    """(utterance id, wav path, reference text) of a data directory, sorted by id; every
    utterance of wav.scp needs its text."""
    wavs, texts = read_table(d / "wav.scp"), read_table(d / "text")
    missing = sorted(set(wavs) - set(texts))
    if missing:
        raise SystemExit(f"{d / 'text'}: no text for {len(missing)} utterances of wav.scp, "
                         f"e.g. {missing[0]}")
    return [(k, wavs[k], texts[k]) for k in sorted(wavs)]


def join_recordings(data_dirs: list[Path], minutes: float):
    """(samples float32, reference words, utterances used) of the joined recording."""
    import numpy as np
    import soundfile

    items = [(path, text) for d in data_dirs for _, path, text in read_data_dir(d)]
    if not items:
        raise SystemExit(f"no utterances in {', '.join(map(str, data_dirs))}")
    pause = np.zeros(int(PAUSE_SECONDS * SAMPLE_RATE), dtype=np.float32)
    parts, words, total, used = [], [], 0, 0
    while total < minutes * 60 * SAMPLE_RATE:
        path, text = items[used % len(items)]
        audio, rate = soundfile.read(path, dtype="float32")
        if rate != SAMPLE_RATE or audio.ndim != 1:
            raise SystemExit(f"{path}: {rate} Hz, {audio.ndim}-D; expected mono {SAMPLE_RATE} Hz")
        parts += [audio, pause]
        words += text.split()
        total += len(audio) + len(pause)
        used += 1
    return np.concatenate(parts), words, used


def word_errors(ref: list[str], hyp: list[str]) -> int:
    import editdistance

    return editdistance.eval(ref, hyp)


def decode_options(path: Path | None) -> dict:
    import yaml

    options = yaml.safe_load(path.read_text()) if path else {}
    return {k: v for k, v in (options or {}).items()
            if k in ("beam_size", "ctc_weight", "penalty", "maxlenratio", "minlenratio",
                     "lm_weight", "nbest")}


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def measure(args) -> dict:
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    if args.threads:
        torch.set_num_threads(args.threads)
    options = decode_options(args.decode_config)
    s2t = Speech2Text(asr_train_config=args.asr_train_config,
                      asr_model_file=args.asr_model_file, device="cpu", **options)
    speech, ref, used = join_recordings(args.data, args.minutes)
    enc = {}

    def pre(module, inputs):
        enc["t0"] = time.perf_counter()

    def post(module, inputs, output):
        enc["seconds"] = time.perf_counter() - enc["t0"]
        enc["frames"] = int(output[0].shape[1])

    s2t.asr_model.encoder.register_forward_pre_hook(pre)
    s2t.asr_model.encoder.register_forward_hook(post)
    warnings = _Warnings()
    logging.getLogger().addHandler(warnings)
    before = rss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        text, _, token_ids, _ = s2t(torch.from_numpy(speech))[0]
    wall = time.perf_counter() - start
    logging.getLogger().removeHandler(warnings)
    hyp = (text or "").split()
    seconds = len(speech) / SAMPLE_RATE
    return {
        "asr_model_file": str(args.asr_model_file), "decode_options": options,
        "threads": torch.get_num_threads(), "audio_seconds": round(seconds, 1),
        "utterances_joined": used, "encoder_frames": enc.get("frames"),
        "wall_seconds": round(wall, 2), "encoder_seconds": round(enc.get("seconds", 0.0), 2),
        "rtf": round(wall / seconds, 4), "rss_before_decode_mib": round(before, 1),
        "peak_rss_mib": round(rss_mib(), 1), "ref_words": len(ref), "hyp_words": len(hyp),
        "hyp_tokens": len(token_ids),
        "wer": round(100 * word_errors(ref, hyp) / max(len(ref), 1), 1),
        "early_stop_warning": any("the decoder probably ended it early" in m
                                  for m in warnings.messages),
        "warnings": warnings.messages[-3:],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--asr_train_config", type=Path, required=True)
    p.add_argument("--asr_model_file", type=Path, required=True)
    p.add_argument("--decode_config", type=Path, default=None,
                   help="a decode YAML (beam_size, ctc_weight, ...); default: Speech2Text's")
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="data directories (wav.scp, text) whose audio is joined")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    row = measure(args)
    if args.json:
        print(json.dumps(row))
    else:
        for key, value in row.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
