"""Shared pieces of the GPU scripts that drive ESPnet's stock ``asr_train`` on the synthetic tone
data set of tests/cli_data.py (train_check.py, amp_check.py, ddp_check.py): the three model
configurations, the data set + feature statistics, the training YAML, the subprocess helper and
the parsers of ESPnet's training log.
"""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from cli_data import data_args, write_dataset  # noqa: E402

FRONTEND = {
    "frontend": "default",
    "frontend_conf": {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80},
}

# name -> (encoder, encoder_conf, decoder, decoder_conf)
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

# the same three models, small enough for CPU smoke runs of the GPU scripts and the CPU tests
TINY_MODELS = {
    "samba_asr": ("samba_asr", {"output_size": 64, "num_blocks": 2, "d_state": 8},
                  "samba_asr", {"num_blocks": 1, "d_state": 8}),
    "speech_mamba": ("speech_mamba", {"output_size": 64, "num_blocks": 1, "attention_heads": 4,
                                      "d_state": 8},
                     "speech_mamba", {"num_blocks": 1, "attention_heads": 4, "d_state": 8}),
    "samba_asr_mamba2": ("samba_asr", {"output_size": 64, "num_blocks": 2, "mixer": "mamba2",
                                       "d_state": 16, "mixer_conf": {"headdim": 16}},
                         "samba_asr", {"num_blocks": 1, "mixer": "mamba2", "d_state": 16,
                                       "mixer_conf": {"headdim": 16}}),
}
SIZES = {"full": MODELS, "tiny": TINY_MODELS}

# parameters mamba-ssm keeps in fp32: Mamba's A_log, D, dt_proj.bias; Mamba2's A_log, D, dt_bias
SSM_PARAM = re.compile(r"(^|\.)(A_log|D|dt_proj\.bias|dt_bias)$")


def write_yaml(path: Path, obj) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(obj, sort_keys=False))


def espnet(module: str, args, log, env=None, timeout=None) -> int:
    """Run ``python -m espnet2.bin.<module> args`` with stdout+stderr into ``log``."""
    cmd = [sys.executable, "-m", f"espnet2.bin.{module}", *map(str, args)]
    with open(log, "w") as f:
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def synth_texts(n: int = 24, seed: int = 0) -> List[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcde") for _ in range(rng.randint(3, 8))) for _ in range(n)]


def make_dataset(out: Path, n_texts: int = 24, repeat: int = 16):
    """tests/cli_data.py's tone set: ``n_texts`` random transcripts, train = ``repeat`` copies."""
    return write_dataset(Path(out) / "data", texts=synth_texts(n_texts), repeat=repeat)


def common_args(ds, num_workers: int = 2) -> list:
    """asr_train options of every run on the data set (char tokens, no plots/tensorboard)."""
    return ["--use_preprocessor", "true", "--token_type", "char", "--token_list",
            ds.token_list, "--num_workers", str(num_workers), "--seed", "0",
            "--use_tensorboard", "false", "--use_matplotlib", "false", "--num_att_plot", "0",
            *data_args(ds)]


def collect_stats(out: Path, ds, common: list) -> Path:
    """ESPnet's --collect_stats run (CPU): feats_stats.npz for global_mvn and the shape files."""
    stats = Path(out) / "stats"
    rc = espnet("asr_train", ["--collect_stats", "true", *common, "--ngpu", "0",
                              "--batch_type", "unsorted", "--batch_size", "8",
                              "--frontend", FRONTEND["frontend"],
                              *[x for k, v in FRONTEND["frontend_conf"].items()
                                for x in ("--frontend_conf", f"{k}={v}")],
                              "--encoder", "transformer", "--model_conf", "ctc_weight=1.0",
                              "--output_dir", stats], Path(out) / "stats.log")
    assert rc == 0, (Path(out) / "stats.log").read_text()[-3000:]
    return stats


def shape_args(stats: Path) -> list:
    """Shape files + fold lengths (speech samples, text tokens) for --batch_type folded."""
    return ["--train_shape_file", stats / "train/speech_shape",
            "--train_shape_file", stats / "train/text_shape",
            "--valid_shape_file", stats / "valid/speech_shape",
            "--valid_shape_file", stats / "valid/text_shape",
            "--fold_length", "80000", "--fold_length", "150"]


def train_config(name: str, stats: Path, max_epoch: int, size: str = "full", **extra) -> dict:
    """The training YAML of one of MODELS (train_check.py's settings) or of its TINY_MODELS
    version (size="tiny"); ``extra`` overrides top-level keys."""
    enc, enc_conf, dec, dec_conf = SIZES[size][name]
    config = {
        "encoder": enc, "encoder_conf": enc_conf, "decoder": dec, "decoder_conf": dec_conf,
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1}, **FRONTEND,
        "normalize": "global_mvn",
        "normalize_conf": {"stats_file": str(Path(stats) / "train" / "feats_stats.npz")},
        "optim": "adam", "optim_conf": {"lr": 0.002}, "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": 50}, "max_epoch": max_epoch,
        "batch_type": "folded", "batch_size": 16, "keep_nbest_models": 1,
        "grad_clip": 5.0}
    config.update(extra)
    return config


# --------------------------------------------------------------------------------------------
# ESPnet's training log

_EPOCH_RESULTS = re.compile(r"(\d+)epoch results: \[train\](.*?)\[valid\](.*?)(?:\[att_plot\]|$)",
                            re.M)
_KV = re.compile(r"([A-Za-z_][\w]*)=([^,\s]+)")
SKIP_WARNING = "Skipping updating the model"  # trainer.py: "The grad norm is X. Skipping ..."


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.nan


def epoch_results(log_text: str) -> Dict[int, Dict[str, Dict[str, float]]]:
    """{epoch: {"train": {key: value}, "valid": {...}}} from ESPnet's
    ``Nepoch results: [train] k=v, ... [valid] k=v, ...`` lines (the last one per epoch)."""
    out = {}
    for m in _EPOCH_RESULTS.finditer(log_text):
        out[int(m.group(1))] = {part: {k: _num(v) for k, v in _KV.findall(m.group(i))}
                                for part, i in (("train", 2), ("valid", 3))}
    return out


def epoch_losses(log_text: str) -> Dict[int, float]:
    """{epoch: train loss}."""
    return {e: r["train"]["loss"] for e, r in epoch_results(log_text).items()
            if "loss" in r["train"]}


def skipped_steps(log_text: str) -> Dict[int, int]:
    """Steps the trainer skipped because the gradient norm was not finite, per epoch (a warning
    is counted in the epoch whose results line follows it; 0 for epochs without any)."""
    counts: Dict[int, int] = {}
    epoch = 1
    for line in log_text.splitlines():
        m = re.search(r"(\d+)epoch results:", line)
        if m:
            counts.setdefault(int(m.group(1)), 0)
            epoch = int(m.group(1)) + 1
        elif SKIP_WARNING in line:
            counts[epoch] = counts.get(epoch, 0) + 1
    return counts


def last_iteration(log_text: str) -> Optional[tuple]:
    """(epoch, last iteration) of the latest ``Nepoch:train:A-Bbatch`` progress line."""
    found = re.findall(r"(\d+)epoch:train:(\d+)-(\d+)(?:batch|iter)", log_text)
    if not found:
        return None
    e, _, b = found[-1]
    return int(e), int(b)


def nan_in_log(log_text: str) -> bool:
    """A nan/inf value anywhere in the progress/result lines (``=nan``, ``=inf``)."""
    return bool(re.search(r"=-?(nan|inf)\b", log_text, re.I))
