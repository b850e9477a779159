#!/usr/bin/env python3
"""Print the parameter count of the ASR model each training config builds.

    python local/count_params.py --token_list data/en_token_list/char/tokens.txt conf/tuning/*.yaml

Builds the model with ESPnet's own ASRTask.build_model (no training, no data); normalisation is
left out (it has no parameters).  Without --token_list a 32-symbol char list is assumed.
"""

import argparse
import sys
import tempfile
from pathlib import Path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="+")
    p.add_argument("--token_list", default=None)
    args = p.parse_args()
    import logging
    logging.disable(logging.WARNING)
    from espnet2.tasks.asr import ASRTask

    tmp = tempfile.TemporaryDirectory()
    token_list = args.token_list
    if token_list is None:
        token_list = str(Path(tmp.name) / "tokens.txt")
        toks = ["<blank>", "<unk>", "<space>", "'"] + [chr(c) for c in range(65, 91)] + ["<sos/eos>"]
        Path(token_list).write_text("\n".join(toks) + "\n")
    counts = {}
    for cfg in args.configs:
        ns = ASRTask.get_parser().parse_args(
            ["--config", cfg, "--token_list", token_list, "--output_dir", tmp.name,
             "--token_type", "char", "--normalize", "none"])
        model = ASRTask.build_model(ns)
        n = sum(p.numel() for p in model.parameters())
        enc = sum(p.numel() for p in model.encoder.parameters())
        dec = sum(p.numel() for p in model.decoder.parameters()) if model.decoder else 0
        counts[cfg] = n
        print(f"{Path(cfg).name:36s} {n / 1e6:6.3f} M parameters "
              f"(encoder {enc / 1e6:.3f} M, decoder {dec / 1e6:.3f} M)")
    ref = max(counts.values())
    spread = (ref - min(counts.values())) / ref
    print(f"spread: {100 * spread:.1f} % of the largest")


if __name__ == "__main__":
    sys.exit(main())
