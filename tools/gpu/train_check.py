"""A few hundred training steps of each model through the stock `asr_train --ngpu 1` with
`use_amp` (bf16 autocast on Hopper), then decoding with `asr_inference --ngpu 1`.

    python tools/gpu/train_check.py OUT_DIR [--epochs 12]

Data: tests/cli_data.py's synthetic tone set (one tone per character), 24 random transcripts
repeated.  Writes OUT_DIR/train_check.json: per model the per-epoch train losses, steps, whether
every loss was finite, and the CER of the decoded test set.  A model passes if training and
decoding exit 0, every epoch's loss is finite and the last is below the first, and the log has
no NaN; the exit status is 1 if any model fails.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_runs import (MODELS, collect_stats, common_args, epoch_losses, espnet,  # noqa: E402
                        make_dataset, shape_args, synth_texts, train_config, write_yaml)


def cer(hyp_file, ref):
    import editdistance
    hyps = dict((line.split(maxsplit=1) + [""])[:2] for line in open(hyp_file).read().splitlines())
    errors = sum(editdistance.eval(hyps.get(u, "").replace(" ", ""), t) for u, t in ref.items())
    return errors / sum(len(t) for t in ref.values())


def passed(entry: dict) -> bool:
    """Training and decoding exited 0, every epoch's loss is finite and the last is below the
    first, and the log has no NaN."""
    losses = [entry["epoch_losses"][e] for e in sorted(entry["epoch_losses"])]
    return bool(entry["train_rc"] == 0 and entry.get("decode_rc") == 0 and losses
                and all(math.isfinite(v) for v in losses) and not entry["nan_in_log"]
                and losses[-1] < losses[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--ngpu", type=int, default=1, help="0: a CPU smoke run of this script")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    a = ap.parse_args()
    out = Path(a.out).resolve()
    texts = synth_texts()
    ds = make_dataset(out, repeat=16)
    common = common_args(ds, num_workers=2)
    stats = collect_stats(out, ds, common)
    summary = {}
    for name in a.models:
        exp = out / name
        exp.mkdir(parents=True, exist_ok=True)
        write_yaml(exp / "train.yaml", train_config(name, stats, a.epochs))
        start = time.time()
        rc = espnet("asr_train", ["--config", exp / "train.yaml", *common, "--ngpu", a.ngpu,
                                  "--use_amp", str(a.ngpu > 0).lower(), *shape_args(stats),
                                  "--output_dir", exp], exp / "train.log")
        train_s = time.time() - start
        log = (exp / "train.log").read_text(errors="replace")
        losses = epoch_losses(log)
        entry = {"train_rc": rc, "train_seconds": round(train_s, 1), "epoch_losses": losses,
                 "steps": a.epochs * math.ceil(len(texts) * 16 / 16),
                 "all_finite": all(math.isfinite(v) for v in losses.values()),
                 "nan_in_log": "nan" in log.lower().replace("nanotts", "")}
        if rc == 0:
            rc = espnet("asr_inference", [
                "--ngpu", a.ngpu, "--batch_size", "1", "--beam_size", "4", "--ctc_weight", "0.3",
                "--asr_train_config", exp / "config.yaml",
                "--asr_model_file", exp / "valid.loss.best.pth",
                "--data_path_and_name_and_type", f"{ds.wav_scp('test')},speech,sound",
                "--output_dir", exp / "decode"], exp / "decode.log")
            entry["decode_rc"] = rc
            if rc == 0:
                ref = {u: t for u, t in (line.split(maxsplit=1) for line in
                                         ds.text("test").read_text().splitlines())}
                entry["test_cer"] = cer(exp / "decode/1best_recog/text", ref)
        else:
            entry["log_tail"] = log[-2500:]
        entry["ok"] = passed(entry)
        summary[name] = entry
        print(name, json.dumps(entry)[:600], flush=True)
    (out / "train_check.json").write_text(json.dumps(summary, indent=1))
    failed = [name for name, entry in summary.items() if not entry["ok"]]
    print("all passed" if not failed else f"FAILED: {' '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
