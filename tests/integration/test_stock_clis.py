"""End to end through ESPnet's own command-line tools, with no wrapper.

``python -m espnet2.bin.asr_train`` / ``asr_inference`` run in subprocesses that never import
``espnet_mamba`` themselves: the ``.pth`` import hook installed with the package has to put
``samba_asr`` / ``speech_mamba`` into ``espnet2.tasks.asr``'s choices.  On a tiny synthetic data
set (tests/cli_data.py, one tone per character) each encoder/decoder pair is trained for a few
CPU epochs; the tests check that the loss falls, that decoding writes one hypothesis per
utterance, and that every saved checkpoint carries exactly the parameters of the model that
``build_model_from_file`` rebuilds (ESPnet itself loads with ``strict=False`` and would leave a
renamed parameter at its random init without a word).

Cost: one collect-stats run, then per configuration one training and one decoding subprocess
(about 8 s of each is ESPnet's import time).  The train+decode jobs of the selected
configurations run in a small pool (one job per CPU core, at most 2, one thread each), started as
soon as the first test needs one, so the checks of one configuration overlap the training of the
next.  About 2 minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional

import pytest

try:  # tests/ is on sys.path under pytest's default import mode (no tests/__init__.py)
    from cli_data import CliDataset, train_args, write_dataset
except ImportError:  # tests/ made a package
    from tests.cli_data import CliDataset, train_args, write_dataset

pytestmark = pytest.mark.slow

EPOCHS = 10
LOSS_FACTOR = 0.5  # last-epoch train loss must be below LOSS_FACTOR * first-epoch train loss
SUBPROCESS_TIMEOUT = 300
try:
    WORKERS = max(1, min(2, len(os.sched_getaffinity(0))))
except AttributeError:  # not Linux
    WORKERS = max(1, min(2, os.cpu_count() or 1))

FRONTEND = {
    "frontend": "default",
    "frontend_conf": {"n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 80},
}
TINY_MAMBA = {"d_state": 8, "d_conv": 4, "expand": 2, "dropout_rate": 0.0}
SAMBA_ENCODER = {"output_size": 64, "num_blocks": 2, **TINY_MAMBA}

# name -> (encoder, encoder_conf, decoder, decoder_conf, ctc_weight)
CONFIGS = {
    "samba_samba": (
        "samba_asr", SAMBA_ENCODER, "samba_asr", {"num_blocks": 1, **TINY_MAMBA}, 0.3),
    # recompute_input_layer: the option through ESPnet's encoder_conf, trainer and packing
    "speechmamba_speechmamba": (
        "speech_mamba", {"output_size": 64, "attention_heads": 4, "num_blocks": 1,
                         "recompute_input_layer": True, **TINY_MAMBA},
        "speech_mamba", {"attention_heads": 4, "num_blocks": 1, **TINY_MAMBA}, 0.3),
    "samba_transformer": (
        "samba_asr", SAMBA_ENCODER,
        "transformer", {"attention_heads": 4, "linear_units": 128, "num_blocks": 1,
                        "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
                        "self_attention_dropout_rate": 0.0, "src_attention_dropout_rate": 0.0},
        0.3),
    "conformer_samba": (
        "conformer", {"output_size": 64, "attention_heads": 4, "linear_units": 128,
                      "num_blocks": 2, "cnn_module_kernel": 7, "dropout_rate": 0.0,
                      "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0},
        "samba_asr", {"num_blocks": 1, **TINY_MAMBA}, 0.3),
    # CTC only: ESPnet spells "no decoder" `decoder: none` (saved as `decoder: null`); with
    # ctc_weight 1.0 ESPnetASRModel drops any decoder anyway ("Set decoder to none ...").
    "samba_ctc": ("samba_asr", SAMBA_ENCODER, None, None, 1.0),
}
PLUGIN_CLASSES = {"samba_asr": ("SambaASREncoder", "SambaASRDecoder"),
                  "speech_mamba": ("SpeechMambaEncoder", "SpeechMambaDecoder")}


# --------------------------------------------------------------------------------------------
# subprocesses

_live: set = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


def cli_env():
    """The caller's environment (PYTHONPATH untouched), the hook on, one thread per process."""
    env = dict(os.environ)
    env.pop("ESPNET_MAMBA_DISABLE_HOOK", None)
    env.pop("ESPNET_MAMBA_BACKEND", None)  # auto: the PyTorch path on a CPU
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"<{path} missing>"
    return f"--- last {n} lines of {path} ---\n" + "\n".join(lines[-n:])


def run_espnet(module: str, args, cwd: Path, log: Path) -> int:
    """`python -m espnet2.bin.<module> ARGS`, stdout+stderr into `log`; returns the exit code."""
    cmd = [sys.executable, "-m", f"espnet2.bin.{module}", *map(str, args)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        with _live_lock:
            if _stopping.is_set():
                f.write("<not started: the test run is ending>\n")
                return -1
            proc = subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=f,
                                    stderr=subprocess.STDOUT)
            _live.add(proc)
        try:
            return proc.wait(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            f.write(f"\n<killed after {SUBPROCESS_TIMEOUT} s>\n")
            return -1
        finally:
            with _live_lock:
                _live.discard(proc)


def _stop_live_processes():
    with _live_lock:
        _stopping.set()
        procs = list(_live)
    for proc in procs:  # only the processes this module started
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def common_train_args(ds: CliDataset):
    return train_args(ds, ngpu=0)


def write_yaml(path: Path, obj) -> None:
    import yaml

    path.write_text(yaml.safe_dump(obj, sort_keys=False))


def epoch_losses(log_text: str) -> Dict[int, float]:
    """{epoch: train loss} from ESPnet's `Nepoch results: [train] ..., loss=X, ... [valid] ...`."""
    losses = {}
    for m in re.finditer(r"(\d+)epoch results: \[train\](.*?)\[valid\]", log_text):
        loss = re.search(r"(?<![\w])loss=([^,\s]+)", m.group(2))
        if loss:
            losses[int(m.group(1))] = float(loss.group(1))
    return losses


# --------------------------------------------------------------------------------------------
# one configuration: write the YAML, train, decode

@dataclasses.dataclass
class Run:
    name: str
    exp: Path
    train_rc: Optional[int] = None
    decode_rc: Optional[int] = None

    @property
    def config_yaml(self) -> Path:  # the one asr_train saved: what inference rebuilds from
        return self.exp / "config.yaml"

    @property
    def train_log(self) -> Path:
        return self.exp / "train.log"

    @property
    def decode_dir(self) -> Path:
        return self.exp / "decode"

    @property
    def decode_log(self) -> Path:
        return self.decode_dir / "decode.log"

    def check_trained(self):
        assert self.train_rc == 0, (
            f"asr_train [{self.name}] failed (rc={self.train_rc})\n{tail(self.train_log)}")


def train_and_decode(name: str, ds: CliDataset, stats: Path) -> Run:
    encoder, encoder_conf, decoder, decoder_conf, ctc_weight = CONFIGS[name]
    run = Run(name, ds.root.parent / "exp" / name)
    run.exp.mkdir(parents=True, exist_ok=True)
    config = {
        "encoder": encoder, "encoder_conf": encoder_conf,
        "decoder": decoder if decoder is not None else "none",
        **({"decoder_conf": decoder_conf} if decoder is not None else {}),
        "model_conf": {"ctc_weight": ctc_weight, "lsm_weight": 0.0},
        **FRONTEND,
        "normalize": "global_mvn",
        "normalize_conf": {"stats_file": str(stats / "train" / "feats_stats.npz")},
        "optim": "adam", "optim_conf": {"lr": 0.003},
        "max_epoch": EPOCHS,
        "batch_type": "folded", "batch_size": 4,
        "keep_nbest_models": 2,
    }
    write_yaml(run.exp / "train.yaml", config)
    run.train_rc = run_espnet("asr_train", [
        "--config", run.exp / "train.yaml", *common_train_args(ds),
        # folded batches need one fold length per shape file (speech samples, text tokens)
        "--train_shape_file", stats / "train" / "speech_shape",
        "--train_shape_file", stats / "train" / "text_shape",
        "--valid_shape_file", stats / "valid" / "speech_shape",
        "--valid_shape_file", stats / "valid" / "text_shape",
        "--fold_length", "80000", "--fold_length", "150",
        "--output_dir", run.exp,
    ], cwd=run.exp.parent, log=run.train_log)
    if run.train_rc != 0:
        return run
    run.decode_rc = run_espnet("asr_inference", [
        "--ngpu", "0", "--batch_size", "1", "--beam_size", "2",
        # CTC only: all weight on the CTC prefix scorer (there is no decoder to weigh)
        "--ctc_weight", 1.0 if ctc_weight >= 1.0 else 0.3,
        "--asr_train_config", run.config_yaml,
        "--asr_model_file", run.exp / "valid.loss.best.pth",
        "--data_path_and_name_and_type", f"{ds.wav_scp('test')},speech,sound",
        "--output_dir", run.decode_dir,
    ], cwd=run.exp, log=run.decode_log)
    return run


# --------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> CliDataset:
    return write_dataset(tmp_path_factory.mktemp("espnet_cli") / "data", repeat=4)


def collect_stats(train_args: list, out: Path, cwd: Path) -> int:
    """One ``asr_train --collect_stats true`` run into ``out`` (log: out/collect_stats.log).
    The stats depend only on the frontend; a stock Transformer encoder keeps them independent
    of the plugin."""
    return run_espnet("asr_train", [
        "--collect_stats", "true", *train_args,
        "--batch_type", "unsorted", "--batch_size", "4",
        "--frontend", FRONTEND["frontend"],
        *[a for k, v in FRONTEND["frontend_conf"].items() for a in ("--frontend_conf", f"{k}={v}")],
        # collect_stats builds the model too: give it a valid one (no decoder -> CTC only)
        "--encoder", "transformer", "--encoder_conf", "output_size=16",
        "--encoder_conf", "num_blocks=1", "--encoder_conf", "linear_units=16",
        "--model_conf", "ctc_weight=1.0",
        "--output_dir", out,
    ], cwd=cwd, log=out / "collect_stats.log")


@pytest.fixture(scope="session")
def feats_stats(dataset) -> Path:
    """Shape files and global-MVN stats from one --collect_stats run."""
    out = dataset.root.parent / "stats"
    rc = collect_stats(common_train_args(dataset), out, dataset.root.parent)
    assert rc == 0 and (out / "train" / "feats_stats.npz").exists(), (
        f"collect_stats failed (rc={rc})\n{tail(out / 'collect_stats.log')}")
    return out


@pytest.fixture(scope="session")
def runs(request, dataset, feats_stats):
    """{config name: Future[Run]}, submitted at once for every configuration the test run
    selected (so -k picks one without training the others)."""
    wanted = []
    for item in request.session.items:
        name = getattr(getattr(item, "callspec", None), "params", {}).get("trained")
        if name in CONFIGS and name not in wanted:
            wanted.append(name)
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="espnet-cli")
    futures: Dict[str, Future] = {
        name: pool.submit(train_and_decode, name, dataset, feats_stats) for name in wanted}

    class Lazy(dict):
        def __missing__(self, name):
            self[name] = pool.submit(train_and_decode, name, dataset, feats_stats)
            return self[name]

    yield Lazy(futures)
    pool.shutdown(wait=False, cancel_futures=True)
    _stop_live_processes()  # after a failure with -x: don't leave trainings running
    pool.shutdown(wait=True)


@pytest.fixture(scope="module", params=list(CONFIGS))
def trained(request, runs) -> Run:
    return runs[request.param].result()


# --------------------------------------------------------------------------------------------
# tests

def test_train_loss_goes_down(trained: Run):
    trained.check_trained()
    text = trained.train_log.read_text(errors="replace")
    for name in ("config.yaml", "latest.pth", "valid.loss.best.pth"):
        assert (trained.exp / name).exists(), (
            f"{name} missing in {trained.exp}\n{tail(trained.train_log)}")
    assert list(trained.exp.glob("*epoch.pth")), f"no *epoch.pth in {trained.exp}"

    # the plugin classes really were built (registered by the .pth hook: the subprocess never
    # imports espnet_mamba itself)
    encoder, _, decoder, _, ctc_weight = CONFIGS[trained.name]
    if encoder in PLUGIN_CLASSES:
        assert f"(encoder): {PLUGIN_CLASSES[encoder][0]}(" in text, tail(trained.train_log, 200)
    if decoder in PLUGIN_CLASSES and ctc_weight < 1.0:
        assert f"(decoder): {PLUGIN_CLASSES[decoder][1]}(" in text, tail(trained.train_log, 200)

    losses = epoch_losses(text)
    assert sorted(losses) == list(range(1, EPOCHS + 1)), (
        f"per-epoch results missing: {losses}\n{tail(trained.train_log)}")
    first, last = losses[1], losses[EPOCHS]
    print(f"\n[{trained.name}] train loss per epoch: "
          + ", ".join(f"{losses[e]:.3f}" for e in sorted(losses)))
    assert last == last and last < LOSS_FACTOR * first, (
        f"[{trained.name}] train loss did not fall enough: first {first:.3f}, last {last:.3f} "
        f"(want < {LOSS_FACTOR} x first); all: {losses}\n{tail(trained.train_log)}")

    # the reporter state in checkpoint.pth (loadable with weights_only) has the same numbers
    import torch

    ckpt = torch.load(trained.exp / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["reporter"]["stats"][EPOCHS]["train"]["loss"] == pytest.approx(
        last, rel=1e-2, abs=1e-3)


def test_decode(trained: Run, dataset: CliDataset):
    trained.check_trained()
    log = trained.decode_log
    assert trained.decode_rc == 0, (
        f"asr_inference [{trained.name}] failed (rc={trained.decode_rc})\n{tail(log)}")
    hyp_file = trained.decode_dir / "1best_recog" / "text"
    assert hyp_file.exists(), f"{hyp_file} missing\n{tail(log)}"
    lines = hyp_file.read_text(encoding="utf-8").splitlines()
    hyps = dict((line.split(maxsplit=1) + [""])[:2] for line in lines)
    assert len(lines) == len(dataset.utts) and set(hyps) == set(dataset.utts), (
        f"want one line per utterance {sorted(dataset.utts)}, got:\n"
        + "\n".join(lines) + f"\n{tail(log)}")
    assert any(h.strip() for h in hyps.values()), f"all hypotheses empty\n{tail(log)}"

    _, _, decoder, _, _ = CONFIGS[trained.name]
    if decoder in PLUGIN_CLASSES:  # our decoders implement BatchScorerInterface
        assert "BatchBeamSearch implementation is selected" in log.read_text(), tail(log, 200)

    import editdistance

    errors = sum(editdistance.eval(hyps[u], ref) for u, ref in dataset.utts.items())
    total = sum(len(ref) for ref in dataset.utts.values())
    print(f"\n[{trained.name}] CER {errors}/{total}: "
          + ", ".join(f"{dataset.utts[u]}->{hyps[u]!r}" for u in sorted(hyps)))


def test_checkpoints_have_every_key(trained: Run):
    """Every *.pth ESPnet saved has exactly the rebuilt model's keys and shapes, both ways."""
    trained.check_trained()
    import torch
    from espnet2.tasks.asr import ASRTask

    model, _ = ASRTask.build_model_from_file(trained.config_yaml, None, "cpu")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert want, "the rebuilt model has no parameters"
    files = sorted(trained.exp.glob("*.pth"))
    assert any(p.name.endswith("epoch.pth") for p in files), [p.name for p in files]
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if path.name == "checkpoint.pth":
            state = state["model"]
        got = {k: tuple(v.shape) for k, v in state.items()}
        missing = sorted(set(want) - set(got))
        unexpected = sorted(set(got) - set(want))
        assert not missing and not unexpected, (
            f"{path.name}: missing {missing[:20]} ({len(missing)}), "
            f"unexpected {unexpected[:20]} ({len(unexpected)})")
        bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
        assert not bad, f"{path.name}: shape mismatches {bad}"
    # and a strict load of the model that decoding used goes through
    model.load_state_dict(torch.load(trained.exp / "valid.loss.best.pth", map_location="cpu",
                                     weights_only=True), strict=True)
