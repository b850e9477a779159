"""One utterance of NaN/inf audio never ends an ESPnet job, and the log names it.

Through ESPnet's own command-line tools (subprocesses; the ``.pth`` hook registers the plugin):

- ``asr_train`` with one NaN utterance among the training data finishes its epochs: the encoder
  passes the NaN on, ESPnet's trainer skips the step whose gradient norm is not finite, and the
  log names the utterance (integration/nonfinite_batches.py);
- ``asr_inference`` over a test set with one NaN and one inf file writes every hypothesis,
  empty for the two bad ones, and names them (the encoder raises ESPnet's TooShortUttError,
  which asr_inference catches per utterance), with ``batch_size`` 1 and 3 (a batch that holds a
  bad utterance is decoded again one at a time by ESPnet).

The feature statistics of the training run come from the clean training data.  And:

- ``asr_train --collect_stats true`` (asr.sh stage 10) over data with a NaN and an inf file
  names both, leaves them out of the statistics and the shape files, and writes the statistics
  of the clean utterances (stock ESPnet: NaN statistics, exit 0, no word;
  integration/nonfinite_stats.py);
- ``asr_train`` with an utterance too short for the encoder's subsampling alone in its batch (in
  training and in validation) finishes and saves the model: the log names the utterance and
  ESPnet's trainer skips that step (stock ESPnet: the TooShortUttError ends the job;
  integration/nonfinite_batches.py).

About 2.5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from cli_data import train_args, write_dataset
from test_stock_clis import (
    CONFIGS,
    FRONTEND,
    collect_stats,
    run_espnet,
    tail,
    write_yaml,
)

pytestmark = pytest.mark.slow

EPOCHS = 2
BAD_TRAIN = "spk9-bad-nan"
SHORT = "spk9-short"
SHORT_SAMPLES = 800  # 6 frames at hop 160: fewer than the 7 that conv2d subsampling needs
BAD_TEST = {"spk9-bad-inf": np.inf, "spk9-bad-nan": np.nan}


def write_bad_wav(path: Path, value: float, sample_rate: int) -> None:
    """One second of float audio (ESPnet reads float WAV as is), with `value` in the middle."""
    import soundfile

    wav = 0.01 * np.random.default_rng(1).standard_normal(sample_rate).astype(np.float32)
    wav[sample_rate // 2: sample_rate // 2 + 10] = value
    soundfile.write(str(path), wav, sample_rate, subtype="FLOAT")


def with_bad_utterances(src: Path, dst: Path, bad: dict) -> None:
    """A copy of the Kaldi data dir `src` with the utterances `bad` {utt: wav} added."""
    dst.mkdir(parents=True, exist_ok=True)
    for name, line in (("wav.scp", "{u} {w}\n"), ("text", "{u} abc\n")):
        lines = (src / name).read_text().splitlines(keepends=True)
        lines += [line.format(u=u, w=w) for u, w in bad.items()]
        (dst / name).write_text("".join(sorted(lines)))


def with_nonfinite_copies(ds, split: str, tmp_path: Path) -> Path:
    """The data set's ``split`` plus the utterances of BAD_TEST (all-inf, all-NaN audio), as a
    new data directory under tmp_path."""
    wavs = {}
    for utt, value in BAD_TEST.items():
        wavs[utt] = tmp_path / f"{utt}.wav"
        write_bad_wav(wavs[utt], value, ds.sample_rate)
    out = tmp_path / f"{split}_nonfinite"
    with_bad_utterances(ds.sets[split], out, wavs)
    return out


def write_train_config(path: Path, stats: Path, max_epoch: int, batch_size: int) -> None:
    """The tiny samba_asr + samba_asr training config of these tests, normalised by the
    statistics in ``stats``."""
    encoder, encoder_conf, decoder, decoder_conf, ctc_weight = CONFIGS["samba_samba"]
    write_yaml(path, {
        "encoder": encoder, "encoder_conf": encoder_conf,
        "decoder": decoder, "decoder_conf": decoder_conf,
        "model_conf": {"ctc_weight": ctc_weight, "lsm_weight": 0.0}, **FRONTEND,
        "normalize": "global_mvn",
        "normalize_conf": {"stats_file": str(stats / "train" / "feats_stats.npz")},
        "optim": "adam", "optim_conf": {"lr": 0.003}, "max_epoch": max_epoch,
        "batch_type": "folded", "batch_size": batch_size, "keep_nbest_models": 1,
    })


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data set, stats dir, exp dir) after one collect-stats run and one training run with a
    NaN utterance in the training data."""
    root = tmp_path_factory.mktemp("bad_utterance")
    ds = write_dataset(root / "data", repeat=4)
    stats = root / "stats"
    rc = collect_stats(train_args(ds), stats, root)
    assert rc == 0, tail(stats / "collect_stats.log")

    bad_wav = root / "data" / "wav" / f"{BAD_TRAIN}.wav"
    write_bad_wav(bad_wav, np.nan, ds.sample_rate)
    train_bad = root / "data" / "data" / "train_bad"
    with_bad_utterances(ds.sets["train"], train_bad, {BAD_TRAIN: bad_wav})
    # the shape files list every utterance the sampler draws: the bad one too
    for name, line in (("speech_shape", f"{BAD_TRAIN} {ds.sample_rate}\n"),
                       ("text_shape", f"{BAD_TRAIN} 3\n")):
        lines = (stats / "train" / name).read_text().splitlines(keepends=True) + [line]
        (stats / "train" / f"{name}.bad").write_text("".join(sorted(lines)))

    exp = root / "exp"
    exp.mkdir()
    write_train_config(exp / "train.yaml", stats, max_epoch=EPOCHS, batch_size=4)
    args = [a if a != f"{ds.wav_scp('train')},speech,sound" else f"{train_bad / 'wav.scp'},speech,sound"
            for a in map(str, train_args(ds))]
    args = [a if a != f"{ds.text('train')},text,text" else f"{train_bad / 'text'},text,text"
            for a in args]
    rc = run_espnet("asr_train", [
        "--config", exp / "train.yaml", *args,
        "--train_shape_file", stats / "train" / "speech_shape.bad",
        "--train_shape_file", stats / "train" / "text_shape.bad",
        "--valid_shape_file", stats / "valid" / "speech_shape",
        "--valid_shape_file", stats / "valid" / "text_shape",
        "--fold_length", "80000", "--fold_length", "150", "--output_dir", exp,
    ], cwd=root, log=exp / "train.log")
    assert rc == 0, f"asr_train with one NaN utterance failed (rc={rc})\n{tail(exp / 'train.log')}"
    return ds, exp


def test_training_skips_the_nan_step_and_names_it(setup):
    ds, exp = setup
    log = (exp / "train.log").read_text(errors="replace")
    for epoch in range(1, EPOCHS + 1):
        assert f"{epoch}epoch results" in log, tail(exp / "train.log")
    assert (exp / "valid.loss.best.pth").exists()
    # one warning per epoch naming the utterance (its batch is drawn once an epoch) ...
    named = re.findall(r"non-finite values \(NaN/inf\) in the input of utterance\(s\) "
                       rf"\['{BAD_TRAIN}'\]", log)
    assert len(named) == EPOCHS, tail(exp / "train.log", 200)
    # ... and ESPnet's own skip of that step
    assert log.count("Skipping updating the model") == EPOCHS, tail(exp / "train.log", 200)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_decoding_skips_nan_and_inf_utterances(setup, batch_size, tmp_path):
    ds, exp = setup
    test = with_nonfinite_copies(ds, "test", tmp_path)
    out = tmp_path / "decode"
    rc = run_espnet("asr_inference", [
        "--ngpu", "0", "--batch_size", batch_size, "--beam_size", "2", "--ctc_weight", "0.3",
        "--asr_train_config", exp / "config.yaml",
        "--asr_model_file", exp / "valid.loss.best.pth",
        "--data_path_and_name_and_type", f"{test / 'wav.scp'},speech,sound",
        "--output_dir", out,
    ], cwd=tmp_path, log=out / "decode.log")
    log = (out / "decode.log").read_text(errors="replace")
    assert rc == 0, f"asr_inference failed (rc={rc})\n{tail(out / 'decode.log')}"
    lines = (out / "1best_recog" / "text").read_text(encoding="utf-8").splitlines()
    hyps = dict((line.split(maxsplit=1) + [""])[:2] for line in lines)
    assert set(hyps) == set(ds.utts) | set(BAD_TEST), lines
    for utt in BAD_TEST:
        assert hyps[utt].strip() == "", (utt, hyps[utt])
        # ESPnet's line: "Utterance ['<key>'] ..." (batch of 1), "Utterance <key> ..." (retry)
        assert re.search(rf"Utterance (\['{utt}'\]|{utt}) has non-finite values \(NaN/inf\) "
                         r"in the input", log), tail(out / "decode.log", 200)
    assert any(hyps[u].strip() for u in ds.utts), f"all good hypotheses empty: {hyps}"


# --------------------------------------------------------------------------------------------
# statistics (asr.sh stage 10)

def _with_data(args, name: str, data_dir: Path) -> list:
    """train_args with the `name` ("train"/"valid") data paths replaced by those of data_dir."""
    out = []
    for a in map(str, args):
        if a.endswith(",speech,sound") and f"/{name}/" in a:
            a = f"{data_dir / 'wav.scp'},speech,sound"
        elif a.endswith(",text,text") and f"/{name}/" in a:
            a = f"{data_dir / 'text'},text,text"
        out.append(a)
    return out


def test_collect_stats_leaves_out_nonfinite_utterances(setup, tmp_path):
    ds, _ = setup
    clean = ds.root.parent / "stats"  # the setup's statistics, of the clean training data
    train = with_nonfinite_copies(ds, "train", tmp_path)
    out = tmp_path / "stats"
    rc = collect_stats(_with_data(train_args(ds), "train", train), out, tmp_path)
    log = (out / "collect_stats.log").read_text(errors="replace")
    assert rc == 0, tail(out / "collect_stats.log")
    for utt in BAD_TEST:
        assert re.search(rf"utterance {utt} \(train set\): non-finite values \(NaN/inf\) in "
                         r"speech; left out", log), tail(out / "collect_stats.log", 100)
    got = np.load(out / "train" / "feats_stats.npz")
    want = np.load(clean / "train" / "feats_stats.npz")
    assert np.isfinite(got["sum"]).all() and np.isfinite(got["sum_square"]).all()
    assert int(got["count"]) == int(want["count"])
    np.testing.assert_allclose(got["sum"], want["sum"], rtol=1e-5)
    np.testing.assert_allclose(got["sum_square"], want["sum_square"], rtol=1e-5)
    for name in ("speech_shape", "text_shape"):
        keys = {line.split()[0] for line in (out / "train" / name).read_text().splitlines()}
        assert keys == {line.split()[0] for line in
                        (clean / "train" / name).read_text().splitlines()}, name


# --------------------------------------------------------------------------------------------
# a batch too short for the encoder

def test_training_skips_a_too_short_batch_and_names_it(setup, tmp_path):
    """One utterance of 6 frames, alone in its batch (batch_size 1) in the training and the
    validation set: the job finishes its epoch and saves the model."""
    import soundfile

    ds, _ = setup
    stats = ds.root.parent / "stats"
    wav = tmp_path / f"{SHORT}.wav"
    noise = 0.01 * np.random.default_rng(2).standard_normal(SHORT_SAMPLES)
    soundfile.write(str(wav), noise.astype(np.float32), ds.sample_rate, subtype="PCM_16")
    args = list(map(str, train_args(ds)))
    shapes = []
    for split in ("train", "valid"):
        data = tmp_path / f"{split}_short"
        with_bad_utterances(ds.sets[split], data, {SHORT: wav})
        args = _with_data(args, split, data)
        for name, line in (("speech_shape", f"{SHORT} {SHORT_SAMPLES}\n"),
                           ("text_shape", f"{SHORT} 3\n")):
            lines = (stats / split / name).read_text().splitlines(keepends=True) + [line]
            (tmp_path / f"{split}_{name}").write_text("".join(sorted(lines)))
            shapes += [f"--{split}_shape_file", tmp_path / f"{split}_{name}"]
    exp = tmp_path / "exp"
    exp.mkdir()
    write_train_config(exp / "train.yaml", stats, max_epoch=1, batch_size=1)
    rc = run_espnet("asr_train", [
        "--config", exp / "train.yaml", *args, *shapes,
        "--fold_length", "80000", "--fold_length", "150", "--output_dir", exp,
    ], cwd=tmp_path, log=exp / "train.log")
    log = (exp / "train.log").read_text(errors="replace")
    assert rc == 0, f"asr_train with a too-short utterance failed (rc={rc})\n" + tail(
        exp / "train.log")
    assert "1epoch results" in log and (exp / "valid.loss.best.pth").exists()
    for step in ("training", "validation"):
        assert re.search(rf"utterance\(s\) \['{SHORT}'\] too short for the model "
                         rf"\(TooShortUttError: .*\); this {step} step is skipped", log), (
            step, tail(exp / "train.log", 200))
    assert log.count("Skipping updating the model") == 1, tail(exp / "train.log", 200)
    # the skipped step's NaN is left out of the epoch's averages
    results = re.search(r"1epoch results: (.*)", log).group(1)
    assert re.search(r"\[train\] .*\bloss=\d", results) and re.search(
        r"\[valid\] .*\bloss=\d", results), results


def test_no_espnet_function_is_wrapped_with_the_hook_disabled():
    """ESPNET_MAMBA_DISABLE_HOOK=1: collect_stats, ASRTask.build_model and ESPnetASRModel's
    forward are ESPnet's own."""
    import os
    import subprocess
    import sys

    code = ("import espnet2.tasks.asr as asr, espnet2.tasks.abs_task as t\n"
            "from espnet2.asr.espnet_model import ESPnetASRModel as M\n"
            "marks = [getattr(t.collect_stats, '_espnet_mamba_finite_stats', False),\n"
            "         getattr(asr.ASRTask.build_model.__func__,\n"
            "                 '_espnet_mamba_resolved_config', False),\n"
            "         getattr(M.forward, '_espnet_mamba_nonfinite', False)]\n"
            "print('MARKS', marks)\n")
    for disabled, want in (("1", "[False, False, False]"), ("", "[True, True, True]")):
        env = dict(os.environ, ESPNET_MAMBA_DISABLE_HOOK=disabled)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert f"MARKS {want}" in out.stdout, (disabled, out.stdout, out.stderr[-2000:])
