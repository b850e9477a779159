"""Decoding real-time factor through ESPnet's own entry point, side by side with ESPnet's
Conformer + Transformer decoder.

For each model trained by benchmarks/asr_train_throughput.py (its --work dir), the stock
``python -m espnet2.bin.asr_inference`` decodes two sets with the same options for every model
(beam 10, CTC weight 0.3, no LM, nbest 1): utterances of LibriSpeech's lengths and 60 s
recordings, at batch size 1 and with ESPnet's batched decoding (``--batch_size B``, which
ESPnet runs only where the beam search is its BatchBeamSearch; elsewhere the run is reported as
not applicable).  Reported: real-time factor (decoding seconds / audio seconds) and the ratio to
the Conformer of the same run.

    python benchmarks/asr_inference_rtf.py --ngpu 1 --work /tmp/asr_train_throughput \
        --out /tmp/asr_inference.json
    python benchmarks/asr_inference_rtf.py --tiny --work DIR --out /tmp/i.json   (CPU smoke)

Weights: the last epoch of the throughput run (a few optimiser steps inside the configs' 15,000
warm-up steps, so practically the initialisation).  Decoding work does not depend on what the
weights learnt except through the number of search steps, so every search runs the same number
of steps for a given length: with maxlenratio > 0 ESPnet stops at maxlen = maxlenratio x encoder
frames (no end detection), and an early <eos> only moves a hypothesis to the ended list while the
beam refills.  maxlenratio = 0.156 output tokens per encoder frame is 3.9 tokens a second at the
25 encoder frames a second of the configs' conv2d subsampling, the token rate of real speech.
minlenratio 0.116 (< maxlenratio, or the <eos> ESPnet appends at the last step would come before
minlen and leave no ended hypothesis, which makes ESPnet decode again with a smaller
minlenratio; such retries are counted, ``retries``, expected 0).  ``search_steps`` is the sum of
ESPnet's logged maximum output lengths (warm-up included).  Triton autotuning or CUDA-graph
capture that a new utterance length triggers after the warm-up is counted, as a user would pay
it.

Timing from ESPnet's own log timestamps (millisecond resolution): the set starts with one batch
of warm-up utterances (CUDA/Triton first-call costs, not counted); the decoding time is from the
last ``total log probability`` line of the warm-up batch to the last one of the set, which
covers reading, front-end, encoder and beam search of every counted utterance.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import asr_train_throughput as train_bench  # noqa: E402

TOKENS_PER_FRAME = round(train_bench.TOKENS_PER_SECOND / 25, 3)
BASELINE = train_bench.BASELINE
DECODE_OPTS = {"beam_size": 10, "ctc_weight": 0.3, "lm_weight": 0.0, "penalty": 0.0,
               "nbest": 1, "minlenratio": round(TOKENS_PER_FRAME - 0.04, 3),
               "maxlenratio": TOKENS_PER_FRAME}
# batch_size 1: "INFO: total log probability: -3.1"; batched: "INFO: utt 0: total log ..."
_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \(\w+:\d+\) INFO: "
                    r"(?:utt \d+: )?total log probability")


_MAXLEN = re.compile(r"INFO: max output length: \[?([\d, ]+)\]?")


def search_steps(text: str) -> int:
    """Sum of the ``max output length`` values ESPnet logs (one per utterance, a list per
    batch)."""
    return sum(int(n) for m in _MAXLEN.findall(text) for n in m.replace(",", " ").split())


def log_seconds(text: str) -> list:
    """Timestamps (s) of the ``total log probability`` lines, one per decoded utterance."""
    fmt = "%Y-%m-%d %H:%M:%S,%f"
    return [datetime.datetime.strptime(s, fmt).timestamp() for s in _STAMP.findall(text)]


def make_sets(root: Path, utts: int, long_utts: int, long_seconds: float, warmup: int,
              vocab: int, scale: float, seed: int = 1) -> dict:
    """Data dirs of the two decoding sets; the first ``warmup`` utterances of each are the
    warm-up (ids with prefix ``a_``, sorted first; ESPnet's iterator keeps the file order)."""
    rng = np.random.default_rng(seed)
    sets = {}
    for name, seconds in (
            ("librispeech", train_bench.librispeech_lengths(warmup + utts, rng) * scale),
            ("long", np.full(warmup + long_utts, long_seconds * scale))):
        # >= 1 s (25 encoder frames): below that minlen and maxlen round to the same step
        seconds = np.maximum(seconds, 1.0)
        d = train_bench.write_set(root, name, seconds, rng, vocab)
        keys = list(d)
        # warm-up: the first `warmup` ids (write_set numbers them in order)
        sets[name] = {"dir": str(root / name), "warmup": keys[:warmup],
                      "counted": keys[warmup:], "seconds": d}
    return sets


def decode(exp: Path, data: dict, out: Path, ngpu: int, batch: int, timeout) -> dict:
    model = exp / "latest.pth"
    cmd = [sys.executable, "-m", "espnet2.bin.asr_inference", "--ngpu", str(ngpu),
           "--batch_size", str(batch), "--asr_train_config", str(exp / "config.yaml"),
           "--asr_model_file", str(model), "--output_dir", str(out),
           "--data_path_and_name_and_type", f"{data['dir']}/wav.scp,speech,sound",
           "--num_workers", "1"]
    for k, v in DECODE_OPTS.items():
        cmd += [f"--{k}", str(v)]
    out.mkdir(parents=True, exist_ok=True)
    log = out / "decode.log"
    t = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    text = log.read_text(errors="replace")
    r = {"exit_status": rc, "wall_seconds": time.time() - t, "log": str(log),
         "beam_search": ("BatchBeamSearch" if "BatchBeamSearch implementation is selected"
                         in text else "BeamSearch"),
         "retries": text.count("there is no N-best results"),
         # which CTC prefix scorer the search ran (ESPNET_MAMBA_CTC_PREFIX decides; asr_inference
         # logs it when it is the plugin's)
         "ctc_prefix_scorer": ("espnet_mamba" if "CTC prefix scores: espnet_mamba's" in text
                               else "espnet"),
         "search_steps": search_steps(text)}
    if rc != 0 and batch > 1 and "Batch decoding is only supported" in text:
        r["applicable"] = False
        return r
    stamps = log_seconds(text)
    n_all = len(data["warmup"]) + len(data["counted"])
    audio = sum(data["seconds"][k] for k in data["counted"])
    r["utterances_decoded"] = len(stamps)
    if rc == 0 and len(stamps) == n_all:
        # warm-up = the first batch: its last line closes the untimed part
        first_counted = len(data["warmup"])
        r["decode_seconds"] = stamps[-1] - stamps[first_counted - 1]
        r["audio_seconds"] = audio
        r["rtf"] = r["decode_seconds"] / audio
        r["utterances"] = len(data["counted"])
        hyp = out / "1best_recog" / "token"
        if hyp.exists():
            lens = [len(line.split()) - 1 for line in hyp.read_text().splitlines() if line]
            r["mean_tokens"] = float(np.mean(lens)) if lens else 0.0
    else:
        r["error"] = text[-2000:]
    return r


def add_ratios(result: dict) -> None:
    base = result["models"].get(BASELINE, {})
    for runs in result["models"].values():
        for key, r in runs.items():
            b = base.get(key, {}).get("rtf")
            r["ratio_to_conformer"] = r["rtf"] / b if r.get("rtf") is not None and b else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ngpu", type=int, default=1)
    p.add_argument("--work", default="/tmp/asr_train_throughput",
                   help="asr_train_throughput.py's --work (its exp/<model> dirs)")
    p.add_argument("--models", nargs="+", default=train_bench.DEFAULT_MODELS,
                   choices=list(train_bench.MODELS))
    p.add_argument("--utts", type=int, default=24, help="LibriSpeech-length utterances")
    p.add_argument("--long-utts", type=int, default=4, help="long recordings")
    p.add_argument("--long-seconds", type=float, default=60.0)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--sets", nargs="+", default=["librispeech", "long"],
                   choices=["librispeech", "long"])
    p.add_argument("--timeout", type=float, default=None, help="seconds per asr_inference run")
    p.add_argument("--out", required=True, help="JSON, rewritten after each run")
    p.add_argument("--tiny", action="store_true", help="toy sets (CPU smoke)")
    args = p.parse_args(argv)
    if args.tiny:
        args.ngpu, scale = 0, 0.1
        # toy runs on shared CPU cores: one thread per ESPnet process
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    else:
        scale = 1.0
    if BASELINE not in args.models:
        args.models = [BASELINE, *args.models]
    work = Path(args.work).resolve()
    for name in args.models:
        if not (work / "exp" / name / "latest.pth").exists():
            raise SystemExit(f"--work {work}: no exp/{name}/latest.pth; train it first with "
                             f"benchmarks/asr_train_throughput.py --work {work} --models {name}")
    vocab = len((work / "corpus" / "tokens.txt").read_text().split())
    sets = make_sets(work / "decode_sets", args.utts, args.long_utts, args.long_seconds,
                     max(args.batch_sizes), vocab, scale)
    result = {"benchmark": "asr_inference_rtf",
              "command": [sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
              "environment": train_bench.environment(),
              "settings": {"ngpu": args.ngpu, "decode_options": DECODE_OPTS,
                           "batch_sizes": args.batch_sizes, "tiny": args.tiny,
                           "baseline": BASELINE, "weights": "exp/<model>/latest.pth",
                           "ESPNET_MAMBA_CTC_PREFIX": os.environ.get("ESPNET_MAMBA_CTC_PREFIX",
                                                                     "auto")},
              "sets": {k: {"utterances": len(v["counted"]), "warmup": len(v["warmup"]),
                           "audio_seconds": sum(v["seconds"][u] for u in v["counted"])}
                       for k, v in sets.items() if k in args.sets},
              "models": {}, "finished": False}
    failed = []
    for name in args.models:
        runs = result["models"].setdefault(name, {})
        for set_name in args.sets:
            for batch in args.batch_sizes:
                # the untimed warm-up: one batch
                data = _with_warmup(sets[set_name], batch, work / "decode_sets")
                key = f"{set_name}_b{batch}"
                print(f"[{time.strftime('%H:%M:%S')}] {name} {key}", flush=True)
                r = decode(work / "exp" / name, data, work / "decode" / name / key, args.ngpu,
                           batch, args.timeout)
                runs[key] = r
                if r.get("applicable", True) and r.get("rtf") is None:
                    failed.append(f"{name}:{key}")
                    print(f"{name} {key}: exit {r['exit_status']}\n{r.get('error', '')}",
                          flush=True)
                add_ratios(result)
                Path(args.out).write_text(json.dumps(result, indent=1))
    result["failed"] = failed
    result["finished"] = not failed
    Path(args.out).write_text(json.dumps(result, indent=1))
    keys = [f"{s}_b{b}" for s in args.sets for b in args.batch_sizes]
    print(f"{'model':18s} " + " ".join(f"{k + ' RTF (x)':>24s}" for k in keys))
    for name, runs in result["models"].items():
        cells = []
        for k in keys:
            r = runs.get(k, {})
            if r.get("applicable") is False:
                cells.append("n/a")
            elif r.get("rtf") is None:
                cells.append("failed")
            else:
                cells.append(f"{r['rtf']:.4f} ({r['ratio_to_conformer']:.2f})")
        print(f"{name:18s} " + " ".join(f"{c:>24s}" for c in cells))
    return result


def _with_warmup(full: dict, batch: int, root: Path) -> dict:
    """The set with its first ``batch`` warm-up utterances (of the written maximum) followed by
    the counted ones, as a wav.scp of its own."""
    warm = full["warmup"][:batch]
    d = root / f"{Path(full['dir']).name}_w{batch}"
    d.mkdir(parents=True, exist_ok=True)
    src = dict(line.split(" ", 1) for line in
               (Path(full["dir"]) / "wav.scp").read_text().splitlines())
    (d / "wav.scp").write_text("".join(f"{u} {src[u]}\n" for u in [*warm, *full["counted"]]))
    return {"dir": str(d), "warmup": warm, "counted": full["counted"], "seconds": full["seconds"]}


if __name__ == "__main__":
    sys.exit(0 if main()["finished"] else 1)
