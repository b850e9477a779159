"""Training throughput through ESPnet's own entry point, side by side with ESPnet's Conformer.

For each model, the stock ``python -m espnet2.bin.asr_train --ngpu N`` trains a few epochs on
one synthetic corpus with LibriSpeech's utterance lengths; ESPnet's per-epoch results line of
train.log (``Nepoch results: [train] ... time=...``) gives the seconds of each epoch.  Reported:
seconds per 1,000 training utterances over the warm epochs (every epoch after the first
``--skip-epochs``, default 1) and the ratio of each model to the Conformer of the same run.
The shipped LibriSpeech configs train with the encoders' CUDA graphs on; ``samba_asr_eager`` /
``speech_mamba_eager`` turn them off, ``samba_asr_graphed`` / ``speech_mamba_graphed`` turn them
on whatever the config says (``VARIANTS``; count graphed runs with ``--skip-epochs 2``: each batch shape is captured
the second time it is seen).

    python benchmarks/asr_train_throughput.py --ngpu 1 --out /tmp/asr_train.json
    python benchmarks/asr_train_throughput.py --tiny --out /tmp/t.json     (CPU smoke, toy sizes)

The models are the shipped configs (egs2/librispeech_100/asr1/conf/tuning) and ESPnet's
LibriSpeech-100 Conformer config, read from ESPnet's recipes (tools/fetch_espnet_recipes.sh puts
them in .cache/espnet-<version>; --baseline-config names the file elsewhere).  Every run gets the
same corpus, batch_bins, accum_grad, optimiser, scheduler, epochs and data-loader workers; the
rest of each config (model, SpecAugment, AMP) is as shipped.

The corpus (deterministic, no downloads): white noise at LibriSpeech's lengths (1-35 s, mean
about 12.3 s; the mixture in ``librispeech_lengths``) as 16 kHz wavs, so ESPnet's default
front-end computes fbanks on the device as in the recipe; transcripts of random words at
3.9 tokens a second (about 3 words a second in a 5,000-piece BPE) over a 5,000-entry word list
(``--token_type word``, one token a word: the token rate and the output layer of a BPE-5000
recipe without a sentencepiece model).  Shape files are written as asr.sh writes them (speech
samples; text ``tokens,vocabulary``) so ``batch_type: numel`` packs batches as the recipe does.
The models learn nothing from noise; only speed is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "gpu"))
from recipe_epoch_times import epoch_times  # noqa: E402

SAMPLE_RATE = 16000
TOKENS_PER_SECOND = 3.9
VOCAB = 5000
CONF = REPO / "egs2" / "librispeech_100" / "asr1" / "conf" / "tuning"
CONF_960 = REPO / "egs2" / "librispeech" / "asr1" / "conf" / "tuning"
BASELINE_REL = ("egs2/librispeech_100/asr1/conf/tuning/"
                "train_asr_conformer_lr2e-3_warmup15k_amp_nondeterministic.yaml")
BASELINE = "conformer"
# name -> shipped config (None: ESPnet's Conformer, found by baseline_config())
MODELS = {
    "conformer": None,
    "samba_asr": CONF / "train_asr_samba_asr_e30_d12.yaml",
    "speech_mamba": CONF / "train_asr_speech_mamba_e14_d6.yaml",
    "samba_asr_960": CONF_960 / "train_asr_samba_asr_e24_d10.yaml",
    "speech_mamba_960": CONF_960 / "train_asr_speech_mamba_e7_d3.yaml",
}
DEFAULT_MODELS = ["conformer", "samba_asr", "speech_mamba"]
# name -> (the model whose shipped config it starts from, keys merged into that config):
# the encoders' CUDA graphs as the shipped configs set them for numel batches (batch sizes vary,
# padded up to a multiple of 8 rows so that fewer shapes are captured), and without them
GRAPHED = {"encoder_conf": {"cuda_graphs": True, "cuda_graph_conf": {"batch_step": 8}}}
EAGER = {"encoder_conf": {"cuda_graphs": False}}
# Samba-ASR with Mamba2 mixers (encoder and decoder; the same number of blocks has about the same
# parameters), the candidate for a faster default at paper size, with and without graphs
MAMBA2 = {"mixer": "mamba2", "d_state": 64, "mixer_conf": {"headdim": 64}}
VARIANTS = {"samba_asr_graphed": ("samba_asr", GRAPHED),
            "speech_mamba_graphed": ("speech_mamba", GRAPHED),
            "samba_asr_eager": ("samba_asr", EAGER),
            "speech_mamba_eager": ("speech_mamba", EAGER),
            "samba_asr_mamba2": ("samba_asr", {"encoder_conf": MAMBA2, "decoder_conf": MAMBA2}),
            "samba_asr_mamba2_graphed": ("samba_asr", {"encoder_conf": {**MAMBA2, **GRAPHED["encoder_conf"]},
                                                       "decoder_conf": MAMBA2})}
MODELS.update({name: MODELS[base] for name, (base, _) in VARIANTS.items()})

# --tiny: the same configs shrunk to toy sizes (CPU smoke); keys merged into the config
TINY_CONF = {
    "conformer": {"encoder_conf": {"output_size": 32, "attention_heads": 2, "linear_units": 64,
                                   "num_blocks": 1, "cnn_module_kernel": 7},
                  "decoder_conf": {"attention_heads": 2, "linear_units": 64, "num_blocks": 1}},
    "samba_asr": {"encoder_conf": {"output_size": 32, "num_blocks": 1, "d_state": 8},
                  "decoder_conf": {"num_blocks": 1, "d_state": 8}},
    "speech_mamba": {"encoder_conf": {"output_size": 32, "attention_heads": 2, "num_blocks": 1,
                                      "d_state": 16, "mixer_conf": {"headdim": 16, "ngroups": 1}},
                     "decoder_conf": {"attention_heads": 2, "num_blocks": 1, "d_state": 16,
                                      "mixer_conf": {"headdim": 16, "ngroups": 1}}},
}
TINY_CONF["samba_asr_960"] = TINY_CONF["samba_asr"]
TINY_CONF["speech_mamba_960"] = TINY_CONF["speech_mamba"]
for _name, (_base, _) in VARIANTS.items():
    TINY_CONF[_name] = TINY_CONF[_base]


# --------------------------------------------------------------------------------------------
# corpus

def librispeech_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """Utterance seconds shaped like LibriSpeech's training sets: most segments 10-17.5 s
    (around 14 s), a quarter short (1-10 s), a tail to 35 s; mean about 12.3 s."""
    kind = rng.choice(3, size=n, p=[0.68, 0.27, 0.05])
    main = np.clip(rng.normal(14.0, 2.0, n), 10.0, 17.5)
    short = rng.uniform(1.0, 10.0, n)
    tail = rng.uniform(17.5, 35.0, n)
    return np.where(kind == 0, main, np.where(kind == 1, short, tail))


def token_list(vocab: int) -> List[str]:
    words = [f"w{i:04d}" for i in range(vocab - 3)]
    return ["<blank>", "<unk>", *words, "<sos/eos>"]


def write_set(root: Path, name: str, seconds, rng: np.random.Generator, vocab: int,
              prefix: str = "") -> Dict[str, float]:
    """A Kaldi data dir ``root/name`` (wav.scp, text, utt2spk, spk2utt, shape files) of white
    noise wavs of the given lengths; returns {utterance id: seconds}."""
    import soundfile

    d = root / name
    (d / "wav").mkdir(parents=True, exist_ok=True)
    words = token_list(vocab)[2:-1]
    lines = {k: [] for k in ("wav.scp", "text", "utt2spk", "speech_shape", "text_shape")}
    durations = {}
    for i, sec in enumerate(seconds):
        utt = f"{prefix}{name}_{i:05d}"
        samples = int(round(float(sec) * SAMPLE_RATE))
        wav = (0.05 * rng.standard_normal(samples) * 32767).astype(np.int16)
        path = d / "wav" / f"{utt}.wav"
        soundfile.write(path, wav, SAMPLE_RATE, subtype="PCM_16")
        n_tok = max(1, int(round(TOKENS_PER_SECOND * samples / SAMPLE_RATE)))
        text = " ".join(words[j] for j in rng.integers(0, len(words), n_tok))
        lines["wav.scp"].append(f"{utt} {path}")
        lines["text"].append(f"{utt} {text}")
        lines["utt2spk"].append(f"{utt} {utt}")
        lines["speech_shape"].append(f"{utt} {samples}")
        lines["text_shape"].append(f"{utt} {n_tok},{vocab}")
        durations[utt] = samples / SAMPLE_RATE
    for fname, rows in lines.items():
        (d / fname).write_text("\n".join(rows) + "\n")
    (d / "spk2utt").write_text("".join(f"{u} {u}\n" for u in durations))
    return durations


def make_corpus(root: Path, utts: int, valid_utts: int, vocab: int, scale: float = 1.0,
                seed: int = 0) -> dict:
    """The training corpus: ``utts`` train and ``valid_utts`` valid utterances (lengths times
    ``scale``; --tiny shortens them), the token list; deterministic in ``seed``."""
    root = Path(root).resolve()
    rng = np.random.default_rng(seed)
    train = write_set(root, "train", librispeech_lengths(utts, rng) * scale, rng, vocab)
    valid = write_set(root, "valid", librispeech_lengths(valid_utts, rng) * scale, rng, vocab)
    (root / "tokens.txt").write_text("\n".join(token_list(vocab)) + "\n")
    secs = np.array(list(train.values()))
    return {"root": str(root), "train_utts": len(train), "valid_utts": len(valid),
            "train_hours": float(secs.sum() / 3600),
            "seconds": {"mean": float(secs.mean()), "min": float(secs.min()),
                        "median": float(np.median(secs)), "max": float(secs.max())},
            "tokens_per_second": TOKENS_PER_SECOND, "vocabulary": vocab, "seed": seed}


# --------------------------------------------------------------------------------------------
# configs

def baseline_config(explicit: Optional[str]) -> Path:
    """ESPnet's LibriSpeech-100 Conformer config: --baseline-config, else ESPnet's recipes
    fetched by tools/fetch_espnet_recipes.sh (.cache/espnet-*)."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SystemExit(f"--baseline-config: no file {path}")
        return path
    found = sorted((REPO / ".cache").glob(f"espnet-*/{BASELINE_REL}"))
    if not found:
        raise SystemExit(
            f"--baseline-config: ESPnet's Conformer config ({BASELINE_REL}) is not in "
            f"{REPO / '.cache'}/espnet-*: run tools/fetch_espnet_recipes.sh where PyPI is "
            "reachable (and copy .cache/ with the repository), or name the file")
    return found[-1]


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_config(name: str, path: Path, args, out: Path) -> dict:
    """The shipped config with the settings every run shares; written to ``out``."""
    import yaml

    config = yaml.safe_load(Path(path).read_text())
    if name in VARIANTS:
        config = merge(config, VARIANTS[name][1])
    if args.tiny:
        config = merge(config, TINY_CONF[name])
    config.update({
        "max_epoch": args.epochs, "batch_type": "numel", "batch_bins": args.batch_bins,
        "accum_grad": args.accum_grad, "num_workers": args.num_workers,
        "optim": "adam", "optim_conf": {"lr": 0.002, "weight_decay": 0.000001},
        "scheduler": "warmuplr", "scheduler_conf": {"warmup_steps": 15000},
        "patience": None, "keep_nbest_models": 1, "num_att_plot": 0, "log_interval": 50,
        "use_tensorboard": False, "use_matplotlib": False, "seed": 2022})
    if args.tiny or args.ngpu == 0:
        config["use_amp"] = False  # ESPnet's AMP is CUDA's
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def train_args(corpus: Path, config: Path, exp: Path, ngpu: int) -> list:
    args = ["--config", config, "--output_dir", exp, "--ngpu", ngpu,
            "--use_preprocessor", "true", "--token_type", "word",
            "--token_list", corpus / "tokens.txt", "--normalize", "utterance_mvn",
            "--resume", "false"]
    for split in ("train", "valid"):
        d = corpus / split
        args += [f"--{split}_data_path_and_name_and_type", f"{d / 'wav.scp'},speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{d / 'text'},text,text",
                 f"--{split}_shape_file", d / "speech_shape",
                 f"--{split}_shape_file", d / "text_shape"]
    return [str(a) for a in args]


def environment() -> dict:
    env = {"python": platform.python_version(), "host": platform.node()}
    try:
        import torch

        env["torch"] = torch.__version__
        env["device_name"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                              else platform.processor() or "cpu")
    except ImportError:
        pass
    import importlib.metadata as md

    for pkg in ("espnet", "espnet_mamba", "mamba_ssm", "causal_conv1d"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    return env


def summarise(times: Dict[int, float], utts: int, skip: int = 1) -> dict:
    """Seconds per 1,000 utterances over the epochs after the first ``skip``."""
    warm = [t for e, t in sorted(times.items()) if e > skip]
    per_1k = [t / utts * 1000 for t in warm]
    return {"epoch_seconds": {str(e): t for e, t in sorted(times.items())},
            "warm_epochs": len(warm),
            "seconds_per_1k_utts": statistics.median(per_1k) if per_1k else None,
            "seconds_per_1k_utts_each": per_1k}


def add_ratios(result: dict) -> None:
    base = result["models"].get(BASELINE, {}).get("seconds_per_1k_utts")
    for r in result["models"].values():
        own = r.get("seconds_per_1k_utts")
        r["ratio_to_conformer"] = own / base if own is not None and base else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ngpu", type=int, default=1)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list(MODELS))
    p.add_argument("--utts", type=int, default=600, help="training utterances")
    p.add_argument("--valid-utts", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="epochs of each training")
    p.add_argument("--skip-epochs", type=int, default=1,
                   help="first epochs not counted (warm-up; with CUDA graphs a batch shape is "
                        "captured the second time it is seen: 2)")
    p.add_argument("--batch-bins", type=int, default=16000000, help="the configs' value")
    p.add_argument("--accum-grad", type=int, default=4, help="the configs' value")
    p.add_argument("--num-workers", type=int, default=4, help="the configs' value")
    p.add_argument("--work", default="/tmp/asr_train_throughput", help="corpus and exp dirs")
    p.add_argument("--baseline-config", help="ESPnet's Conformer config (see the docstring)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per asr_train run")
    p.add_argument("--out", required=True, help="JSON, rewritten after each model")
    p.add_argument("--tiny", action="store_true", help="toy models and corpus (CPU smoke)")
    args = p.parse_args(argv)
    if args.skip_epochs < 0 or args.epochs <= args.skip_epochs:
        p.error(f"--epochs {args.epochs} --skip-epochs {args.skip_epochs}: at least one epoch "
                "must be counted after the skipped ones")
    if args.tiny:
        args.ngpu, vocab, scale = 0, 100, 0.05
        # toy runs on shared CPU cores: one thread per ESPnet process
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        args.batch_bins, args.accum_grad, args.num_workers = 120000, 1, 0
    else:
        vocab, scale = VOCAB, 1.0
    if BASELINE not in args.models:
        args.models = [BASELINE, *args.models]  # the ratios need the side-by-side baseline
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    corpus = make_corpus(work / "corpus", args.utts, args.valid_utts, vocab, scale)
    corpus["build_seconds"] = time.time() - t0
    result = {"benchmark": "asr_train_throughput", "command": [sys.argv[0], *(argv or sys.argv[1:])],
              "environment": environment(), "corpus": corpus,
              "settings": {"ngpu": args.ngpu, "epochs": args.epochs,
                           "skip_epochs": args.skip_epochs, "batch_bins": args.batch_bins,
                           "accum_grad": args.accum_grad, "num_workers": args.num_workers,
                           "optim": "adam lr 0.002 wd 1e-6, warmuplr 15000",
                           "tiny": args.tiny, "baseline": BASELINE},
              "models": {}, "finished": False}
    failed = []
    for name in args.models:
        src = baseline_config(args.baseline_config) if MODELS[name] is None else MODELS[name]
        exp = work / "exp" / name
        exp.mkdir(parents=True, exist_ok=True)
        cfg = run_config(name, src, args, work / f"{name}.yaml")
        cmd = [sys.executable, "-m", "espnet2.bin.asr_train",
               *train_args(Path(corpus["root"]), work / f"{name}.yaml", exp, args.ngpu)]
        print(f"[{time.strftime('%H:%M:%S')}] {name}: asr_train ({src.name})", flush=True)
        t = time.time()
        with open(work / f"{name}.log", "w") as log:
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    timeout=args.timeout).returncode
            except subprocess.TimeoutExpired:
                rc = 124
        # asr.sh's exp/*/train.log is asr_train's stderr: here, the log written above
        train_log = work / f"{name}.log"
        text = train_log.read_text(errors="replace")
        r = {"config": str(src), "exit_status": rc, "wall_seconds": time.time() - t,
             "exp_dir": str(exp), "train_log": str(train_log), "use_amp": bool(cfg.get("use_amp", False)),
             **summarise(epoch_times(text), corpus["train_utts"], args.skip_epochs)}
        if name in VARIANTS:
            r["config_changes"] = VARIANTS[name][1]
        if rc != 0 or r["seconds_per_1k_utts"] is None:
            failed.append(name)
            tail = text[-2000:]
            r["log_tail"] = tail
            print(f"{name}: exit {rc}\n{tail}", flush=True)
        result["models"][name] = r
        add_ratios(result)
        Path(args.out).write_text(json.dumps(result, indent=1))
    result["failed"] = failed
    result["finished"] = not failed
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'model':22s} {'warm epochs':>11s} {'s / 1k utts':>12s} {'x conformer':>12s}")
    for name, r in result["models"].items():
        s, q = r["seconds_per_1k_utts"], r["ratio_to_conformer"]
        s = "-" if s is None else f"{s:.2f}"
        q = "-" if q is None else f"{q:.3f}"
        print(f"{name:22s} {r['warm_epochs']:11d} {s:>12} {q:>12}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["finished"] else 1)
