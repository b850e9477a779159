"""A few hundred training steps of each model through the stock `asr_train --ngpu 1` with
`use_amp` (bf16 autocast on Hopper), then decoding with `asr_inference --ngpu 1`.

    python tools/gpu/train_check.py OUT_DIR [--epochs 12]

Data: tests/cli_data.py's synthetic tone set (one tone per character), 24 random transcripts
repeated.  Writes OUT_DIR/train_check.json: per model the per-epoch train losses, steps, whether
every loss was finite, and the CER of the decoded test set.
"""

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from cli_data import data_args, write_dataset  # noqa: E402
from test_espnet_cli import FRONTEND, epoch_losses, write_yaml  # noqa: E402

MODELS = {
    "samba_asr": ("samba_asr", {"output_size": 256, "num_blocks": 6},
                  "samba_asr", {"num_blocks": 3}),
    "speech_mamba": ("speech_mamba", {"output_size": 256, "num_blocks": 3, "attention_heads": 4},
                     "speech_mamba", {"num_blocks": 2, "attention_heads": 4}),
    "samba_asr_mamba2": ("samba_asr", {"output_size": 256, "num_blocks": 6, "mixer": "mamba2",
                                       "d_state": 64, "mixer_conf": {"headdim": 32}},
                         "samba_asr", {"num_blocks": 3, "mixer": "mamba2", "d_state": 64,
                                       "mixer_conf": {"headdim": 32}}),
}


def espnet(module, args, log):
    cmd = [sys.executable, "-m", f"espnet2.bin.{module}", *map(str, args)]
    with open(log, "w") as f:
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode


def cer(hyp_file, ref):
    import editdistance
    hyps = dict((line.split(maxsplit=1) + [""])[:2] for line in open(hyp_file).read().splitlines())
    errors = sum(editdistance.eval(hyps.get(u, "").replace(" ", ""), t) for u, t in ref.items())
    return errors / sum(len(t) for t in ref.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--ngpu", type=int, default=1, help="0: a CPU smoke run of this script")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    a = ap.parse_args()
    out = Path(a.out).resolve()
    rng = random.Random(0)
    texts = ["".join(rng.choice("abcde") for _ in range(rng.randint(3, 8))) for _ in range(24)]
    ds = write_dataset(out / "data", texts=texts, repeat=16)
    common = ["--use_preprocessor", "true", "--token_type", "char", "--token_list",
              ds.token_list, "--num_workers", "2", "--seed", "0", "--use_tensorboard", "false",
              "--use_matplotlib", "false", "--num_att_plot", "0", *data_args(ds)]
    stats = out / "stats"
    rc = espnet("asr_train", ["--collect_stats", "true", *common, "--ngpu", "0",
                              "--batch_type", "unsorted", "--batch_size", "8",
                              "--frontend", FRONTEND["frontend"],
                              *[x for k, v in FRONTEND["frontend_conf"].items()
                                for x in ("--frontend_conf", f"{k}={v}")],
                              "--encoder", "transformer", "--model_conf", "ctc_weight=1.0",
                              "--output_dir", stats], out / "stats.log")
    assert rc == 0, (out / "stats.log").read_text()[-3000:]
    summary = {}
    for name in a.models:
        enc, enc_conf, dec, dec_conf = MODELS[name]
        exp = out / name
        exp.mkdir(parents=True, exist_ok=True)
        write_yaml(exp / "train.yaml", {
            "encoder": enc, "encoder_conf": enc_conf, "decoder": dec, "decoder_conf": dec_conf,
            "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1}, **FRONTEND,
            "normalize": "global_mvn",
            "normalize_conf": {"stats_file": str(stats / "train" / "feats_stats.npz")},
            "optim": "adam", "optim_conf": {"lr": 0.002}, "scheduler": "warmuplr",
            "scheduler_conf": {"warmup_steps": 50}, "max_epoch": a.epochs,
            "batch_type": "folded", "batch_size": 16, "keep_nbest_models": 1,
            "grad_clip": 5.0})
        start = time.time()
        rc = espnet("asr_train", ["--config", exp / "train.yaml", *common, "--ngpu", a.ngpu,
                                  "--use_amp", str(a.ngpu > 0).lower(),
                                  "--train_shape_file", stats / "train/speech_shape",
                                  "--train_shape_file", stats / "train/text_shape",
                                  "--valid_shape_file", stats / "valid/speech_shape",
                                  "--valid_shape_file", stats / "valid/text_shape",
                                  "--fold_length", "80000", "--fold_length", "150",
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
        summary[name] = entry
        print(name, json.dumps(entry)[:600], flush=True)
    (out / "train_check.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
