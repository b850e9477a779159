"""A whole decode through ESPnet's Speech2Text (what ``python -m espnet2.bin.asr_inference``
runs) with ESPnet's CTC prefix scorer and with ours (``ESPNET_MAMBA_CTC_PREFIX``).

    python benchmarks/ctc_prefix_decode.py --out /tmp/ctc_prefix_decode.json
    python benchmarks/ctc_prefix_decode.py --device cuda --out /tmp/ctc_prefix_decode_gpu.json

An untrained model built by ESPnet's ASRTask (default: samba_asr encoder + decoder, 6 + 2
blocks of width 128; ``--baseline`` adds ESPnet's Conformer + Transformer of the same width)
with a 5,000-token list, decodes one utterance (default 30 s of noise) with beam 10 and CTC
weight 0.3, at ``--ctc_window_margin`` 100 (asr_inference's default) and 0 (exact).  The number
of search steps is fixed as in benchmarks/asr_inference_rtf.py: maxlenratio 0.156 output tokens
per encoder frame (3.9 tokens a second at 25 encoder frames a second), minlenratio 0.116.

Each model is decoded with ESPnet's scorer (``espnet``) and with ours: ``auto`` for our models
(the default setting), ``all`` for ESPnet's (the setting that reaches them).  Reported per
decode: wall seconds, the encoder's, the beam search's, the CTC scorer's (its
``batch_score_partial`` calls, with a device synchronisation on a GPU) and whether the
hypotheses of the two scorers are the same.  One warm-up decode per model is not counted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ctc_prefix_cpu import describe
from long_recording_cpu import build_model_files as build_untrained_model_files

SAMPLE_RATE = 16000
MODELS = {
    "samba_asr": ("samba_asr", {"output_size": 128, "num_blocks": 6, "d_state": 16,
                                "dropout_rate": 0.0},
                  "samba_asr", {"num_blocks": 2, "d_state": 16, "dropout_rate": 0.0}),
    "conformer": ("conformer", {"output_size": 128, "num_blocks": 6, "attention_heads": 4,
                                "linear_units": 512, "dropout_rate": 0.0},
                  "transformer", {"num_blocks": 2, "attention_heads": 4, "linear_units": 512,
                                  "dropout_rate": 0.0}),
}
TINY = {"output_size": 32, "num_blocks": 1}  # --tiny: the test suite's smoke run


def build_model_files(out_dir: Path, name: str, vocab: int, seed: int = 0, tiny=False):
    """config.yaml + model.pth of an untrained model with ``vocab`` word tokens, in
    ``out_dir/name``."""
    encoder, encoder_conf, decoder, decoder_conf = MODELS[name]
    if tiny:
        encoder_conf = dict(encoder_conf, **TINY)
        decoder_conf = dict(decoder_conf, num_blocks=1)
    tokens = ["<blank>", "<unk>", *[f"w{i}" for i in range(vocab - 3)], "<sos/eos>"]
    return build_untrained_model_files(Path(out_dir) / name, encoder, decoder, encoder_conf,
                                       decoder_conf, seed=seed, tokens=tokens,
                                       token_type="word")


def decode(s2t, speech, device) -> dict:
    """One decode, timed: wall, encoder, CTC scorer."""
    spent = {"encoder": 0.0, "ctc": 0.0}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timing(key, fn):
        def run(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            spent[key] += time.perf_counter() - start
            return out
        return run

    ctc = s2t.beam_search.scorers["ctc"]
    encode = s2t.asr_model.encode
    ctc.batch_score_partial = timing("ctc", ctc.batch_score_partial)  # instance attributes:
    s2t.asr_model.encode = timing("encoder", encode)  # removed again below
    try:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            token_ids = s2t(speech)[0][2]
        sync()
        wall = time.perf_counter() - start
    finally:
        del ctc.batch_score_partial, s2t.asr_model.encode
    return {"wall_s": round(wall, 3), "encoder_s": round(spent["encoder"], 3),
            "search_s": round(wall - spent["encoder"], 3), "ctc_s": round(spent["ctc"], 3),
            "scorer": type(ctc.impl).__name__, "tokens": len(token_ids),
            "token_ids": [int(t) for t in token_ids]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--vocab", type=int, default=5000)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--ctc_weight", type=float, default=0.3)
    ap.add_argument("--margins", type=int, nargs="+", default=[100, 0])
    ap.add_argument("--maxlenratio", type=float, default=0.156)
    ap.add_argument("--minlenratio", type=float, default=0.116)
    ap.add_argument("--baseline", action="store_true",
                    help="also ESPnet's Conformer + Transformer (espnet vs all)")
    ap.add_argument("--tiny", action="store_true", help="width 32, one block (a smoke run)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: a shared CPU; 0 leaves torch's default)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from espnet2.bin.asr_inference import Speech2Text

    device = torch.device(a.device)
    speech = (0.1 * np.random.default_rng(0).standard_normal(
        int(a.seconds * SAMPLE_RATE))).astype(np.float32)
    result = {"setup": describe(device), "seconds": a.seconds, "vocab": a.vocab, "beam": a.beam,
              "ctc_weight": a.ctc_weight, "maxlenratio": a.maxlenratio,
              "minlenratio": a.minlenratio, "results": []}
    names = ["samba_asr"] + (["conformer"] if a.baseline else [])
    previous = os.environ.get("ESPNET_MAMBA_CTC_PREFIX")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config, model, n_params = build_model_files(Path(tmp), name, a.vocab, tiny=a.tiny)
            ours = "auto" if name == "samba_asr" else "all"
            for margin in a.margins:
                s2t = Speech2Text(asr_train_config=config, asr_model_file=model,
                                  device=a.device, beam_size=a.beam, ctc_weight=a.ctc_weight,
                                  ctc_window_margin=margin, lm_weight=0.0,
                                  maxlenratio=a.maxlenratio, minlenratio=a.minlenratio,
                                  nbest=1)
                decode(s2t, speech[: SAMPLE_RATE * 2], device)  # warm-up, not counted
                row = {"model": name, "params": n_params, "ctc_window_margin": margin}
                for mode in ("espnet", ours):
                    os.environ["ESPNET_MAMBA_CTC_PREFIX"] = mode
                    row[mode] = decode(s2t, speech, device)
                same = row["espnet"].pop("token_ids") == row[ours].pop("token_ids")
                row["same_hypothesis"] = same
                for key in ("wall_s", "search_s", "ctc_s"):
                    row[f"{key[:-2]}_speedup"] = round(row["espnet"][key] / row[ours][key], 2)
                print(json.dumps(row), flush=True)
                result["results"].append(row)
    if previous is None:
        os.environ.pop("ESPNET_MAMBA_CTC_PREFIX", None)
    else:
        os.environ["ESPNET_MAMBA_CTC_PREFIX"] = previous
    result["setup"]["date_end"] = datetime.datetime.now(datetime.UTC).isoformat(
        timespec="seconds")
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
