"""Regenerate the packed model that later versions must keep decoding the same
(tests/data/packed_compat/, read by tests/integration/test_packed_model_compat.py).

Trains a tiny samba_asr encoder + samba_asr decoder (char tokens) on the synthetic tone data
set of tests/cli_data.py with ESPnet's stock ``asr_train`` (collect-stats, then training), packs
it with ``espnet2.bin.pack``, and decodes two utterances of that data set with
``Speech2Text.from_pretrained`` of the zip.  Writes:

    tests/data/packed_compat/model.zip         the packed model (config.yaml + weights + stats)
    tests/data/packed_compat/<utt>.wav          the two utterances (16 kHz, 16-bit PCM)
    tests/data/packed_compat/hypotheses.json    the decoding options, plugin version and, per
                                                utterance, the 1-best text, token ids and score

Run on a CPU with the version to be frozen installed (e.g. at a release); about a minute on a
2-core CPU:

    python tools/make_compat_model.py [--out tests/data/packed_compat] [--epochs 12]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from cli_data import shape_args, tiny_stats_args, train_args, write_dataset

UTTS = ("spk0-utt00", "spk1-utt01")  # "abcd", "dcbae" of cli_data.DEFAULT_TEXTS
# small enough for a zip of well under 200 KB, big enough to fit the tones
TINY = {"d_state": 4, "d_conv": 4, "expand": 2, "dropout_rate": 0.0}
FRONTEND_CONF = {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 20}
DECODE = {"beam_size": 3, "ctc_weight": 0.3, "lm_weight": 0.0, "nbest": 1}


def env():
    e = dict(os.environ)
    e.pop("ESPNET_MAMBA_DISABLE_HOOK", None)
    e.pop("ESPNET_MAMBA_BACKEND", None)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
             CUDA_VISIBLE_DEVICES="")
    return e


def run(args, cwd: Path, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        rc = subprocess.call([sys.executable, *map(str, args)], cwd=cwd, env=env(), stdout=f,
                             stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SystemExit(f"{' '.join(map(str, args[:3]))} failed (rc={rc}, {log}):\n{tail}")


def train_and_pack(work: Path, epochs: int) -> tuple[Path, dict]:
    import yaml

    ds = write_dataset(work / "data", repeat=4)
    common = [*map(str, train_args(ds, ngpu=0)), "--frontend", "default",
              *[a for k, v in FRONTEND_CONF.items() for a in ("--frontend_conf", f"{k}={v}")]]
    run(["-m", "espnet2.bin.asr_train", *common, *tiny_stats_args()], cwd=work,
        log=work / "logs" / "collect_stats.log")
    config = {
        "encoder": "samba_asr", "encoder_conf": {"output_size": 16, "num_blocks": 2, **TINY},
        "decoder": "samba_asr", "decoder_conf": {"num_blocks": 1, **TINY},
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.0},
        "normalize": "global_mvn",
        "normalize_conf": {"stats_file": "exp/stats/train/feats_stats.npz"},
        "optim": "adam", "optim_conf": {"lr": 0.01},
        "max_epoch": epochs, "batch_type": "folded", "batch_size": 4, "keep_nbest_models": 1,
    }
    (work / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run(["-m", "espnet2.bin.asr_train", "--config", "train.yaml", *common, *shape_args(),
         "--output_dir", "exp/asr"], cwd=work, log=work / "logs" / "train.log")
    run(["-m", "espnet2.bin.pack", "asr",
         "--asr_train_config", "exp/asr/config.yaml",
         "--asr_model_file", "exp/asr/valid.loss.best.pth",
         "--option", "exp/stats/train/feats_stats.npz",
         "--outpath", "exp/packed/model.zip"], cwd=work, log=work / "logs" / "pack.log")
    wavs = dict(line.split(maxsplit=1) for line in ds.wav_scp("test").read_text().splitlines())
    return work / "exp/packed/model.zip", {u: Path(wavs[u]) for u in UTTS}


def decode(zip_file: Path, wavs: dict, home: Path) -> dict:
    """{utt: [text, token ids, score]} with Speech2Text.from_pretrained of the zip (unpacked
    under ``home``), in a subprocess that runs the PyTorch path."""
    from_zip = r"""
import json, sys
import soundfile
from espnet2.bin.asr_inference import Speech2Text
zip_file, wavs, opts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
s2t = Speech2Text.from_pretrained(zip_file, device="cpu", **opts)
out = {}
for utt, path in sorted(wavs.items()):
    speech, _ = soundfile.read(path, dtype="float32")
    text, tokens, token_ids, hyp = s2t(speech)[0]
    out[utt] = [text, [int(i) for i in token_ids], float(hyp.score)]
print("RESULT " + json.dumps(out))
"""
    e = {**env(), "HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", from_zip, str(zip_file),
                           json.dumps({u: str(p) for u, p in wavs.items()}), json.dumps(DECODE)],
                          env=e, capture_output=True, text=True, check=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "packed_compat")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()

    import espnet_mamba

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        zip_file, wavs = train_and_pack(work, args.epochs)
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copy(zip_file, args.out / "model.zip")
        for utt, wav in wavs.items():
            shutil.copy(wav, args.out / f"{utt}.wav")
        stored = {u: args.out / f"{u}.wav" for u in wavs}
        hyps = decode(args.out / "model.zip", stored, work / "home")
    record = {"espnet_mamba_version": espnet_mamba.__version__, "decode": DECODE,
              "hypotheses": hyps}
    (args.out / "hypotheses.json").write_text(json.dumps(record, indent=2) + "\n")
    size = (args.out / "model.zip").stat().st_size
    print(f"wrote {args.out}: model.zip {size} bytes; hypotheses {json.dumps(hyps)}")


if __name__ == "__main__":
    main()
