"""Model zoo: a samba_asr model trained with ESPnet's stock CLIs, packed with ESPnet's pack tool,
unpacked into a fresh directory and decoded there, in a subprocess that forces the plugin's
PyTorch path and sees no GPU (``ESPNET_MAMBA_BACKEND=torch``, ``CUDA_VISIBLE_DEVICES=""``), through
``espnet2.bin.asr_inference.Speech2Text``: same hypotheses (and scores) as the original model.
The training directory is moved away before that decode, so the zip must be self-contained.

And: a checkpoint with a missing or an unexpected key anywhere in the model (encoder, decoder,
ctc, normalize ...) is refused with CheckpointMismatchError naming the keys, although ESPnet's
``build_model_from_file`` loads with ``strict=False``; also through
``Speech2Text.from_pretrained(<zip>)`` (the model-zoo path).

Cost: collect-stats, 3 training epochs, pack and two decodes, each a subprocess of which about
8 s is ESPnet's import; about a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:  # tests/ is on sys.path under pytest's default import mode (no tests/__init__.py)
    from cli_data import CliDataset, shape_args, tiny_stats_args, train_args, write_dataset
except ImportError:  # tests/ made a package
    from tests.cli_data import CliDataset, shape_args, tiny_stats_args, train_args, write_dataset

pytestmark = pytest.mark.slow

EPOCHS = 3
TIMEOUT = 300
TINY = {"d_state": 8, "d_conv": 4, "expand": 2, "dropout_rate": 0.0}
DECODE = {"beam_size": 3, "ctc_weight": 0.3, "lm_weight": 0.0, "nbest": 1}

# Decode every wav of a list with Speech2Text; print {utt: [text, token ids, score]} as JSON,
# plus whether mamba-ssm / causal-conv1d were imported.
DECODE_SCRIPT = r"""
import json, sys
import soundfile
from espnet2.bin.asr_inference import Speech2Text

config, model, wavs, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
s2t = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu", **opts)
out = {}
for utt, path in sorted(wavs.items()):
    speech, _ = soundfile.read(path, dtype="float32")
    text, tokens, token_ids, hyp = s2t(speech)[0]
    out[utt] = [text, [int(i) for i in token_ids], float(hyp.score)]
kernels = sorted(m for m in ("mamba_ssm", "causal_conv1d", "selective_scan_cuda") if m in sys.modules)
print("RESULT " + json.dumps({"hyps": out, "kernels": kernels,
                              "encoder": type(s2t.asr_model.encoder).__module__}))
"""


def env(**extra):
    e = dict(os.environ)
    e.pop("ESPNET_MAMBA_DISABLE_HOOK", None)
    e.pop("ESPNET_MAMBA_BACKEND", None)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return e


def run(args, cwd: Path, log: Path, **extra_env) -> str:
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env(**extra_env),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT)
    log.write_text(" ".join(map(str, args)) + "\n" + proc.stdout)
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, f"{' '.join(map(str, args[:3]))} failed ({log}):\n{tail}"
    return proc.stdout


def common_args(ds: CliDataset):
    return train_args(ds, ngpu=0)


def decode(work: Path, config: Path, model: Path, ds: CliDataset, name: str, **extra_env):
    wavs = {}
    for line in ds.wav_scp("test").read_text().splitlines():
        utt, path = line.split(maxsplit=1)
        wavs[utt] = path
    script = work / "decode_s2t.py"
    script.write_text(DECODE_SCRIPT)
    out = run([script, config, model, json.dumps(wavs), json.dumps(DECODE)], cwd=work,
              log=work / "logs" / f"decode_{name}.log", **extra_env)
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """work/: data, exp/stats, exp/asr (config.yaml + checkpoints), all paths relative to work/
    as asr.sh writes them, so that pack stores relative names."""
    import yaml

    work = tmp_path_factory.mktemp("pack")
    ds = write_dataset(work / "data", repeat=4)
    run(["-m", "espnet2.bin.asr_train", *common_args(ds), *tiny_stats_args(),
         "--frontend_conf", "n_fft=512", "--frontend_conf", "hop_length=160",
         "--frontend_conf", "n_mels=80"], cwd=work, log=work / "logs" / "collect_stats.log")
    config = {
        "encoder": "samba_asr", "encoder_conf": {"output_size": 64, "num_blocks": 2, **TINY},
        "decoder": "samba_asr", "decoder_conf": {"num_blocks": 1, **TINY},
        "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.0},
        "frontend": "default", "frontend_conf": {"n_fft": 512, "hop_length": 160, "n_mels": 80},
        "normalize": "global_mvn",
        "normalize_conf": {"stats_file": "exp/stats/train/feats_stats.npz"},
        "optim": "adam", "optim_conf": {"lr": 0.003},
        "max_epoch": EPOCHS, "batch_type": "folded", "batch_size": 4, "keep_nbest_models": 1,
    }
    (work / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run(["-m", "espnet2.bin.asr_train", "--config", "train.yaml", *common_args(ds), *shape_args(),
         "--output_dir", "exp/asr"], cwd=work, log=work / "logs" / "train.log")
    assert (work / "exp/asr/config.yaml").exists() and (work / "exp/asr/valid.loss.best.pth").exists()
    return work, ds


@pytest.fixture(scope="module")
def original(trained):
    work, ds = trained
    return decode(work, work / "exp/asr/config.yaml", work / "exp/asr/valid.loss.best.pth", ds,
                  "original")


@pytest.fixture(scope="module")
def unpacked(trained, original):
    """Pack as asr.sh's pack stage does, move the training directory away, unpack afresh."""
    from espnet2.main_funcs.pack_funcs import unpack

    work, ds = trained
    run(["-m", "espnet2.bin.pack", "asr",
         "--asr_train_config", "exp/asr/config.yaml",
         "--asr_model_file", "exp/asr/valid.loss.best.pth",
         "--option", "exp/stats/train/feats_stats.npz",
         "--outpath", "exp/packed/model.zip"], cwd=work, log=work / "logs" / "pack.log")
    zip_file = work.parent / f"{work.name}_model.zip"
    shutil.copy(work / "exp/packed/model.zip", zip_file)
    # nothing of the training run is left where the config pointed
    shutil.move(work / "exp", work / "exp_moved_away")
    fresh = work.parent / f"{work.name}_unpacked"
    files = unpack(zip_file, fresh)
    for key in ("asr_train_config", "asr_model_file"):
        assert Path(files[key]).is_file() and Path(files[key]).resolve().is_relative_to(
            fresh.resolve()), files
    return fresh, files


def test_unpacked_model_decodes_like_the_original(trained, original, unpacked):
    import torch

    work, ds = trained
    fresh, files = unpacked
    got = decode(fresh, Path(files["asr_train_config"]), Path(files["asr_model_file"]), ds,
                 "unpacked", ESPNET_MAMBA_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    assert got["kernels"] == [], f"the CPU decode imported kernel modules: {got['kernels']}"
    assert got["encoder"].startswith("espnet_mamba."), got["encoder"]
    assert set(got["hyps"]) == set(ds.utts), got["hyps"]
    print("\nhypotheses (original -> unpacked): " + ", ".join(
        f"{u}: {ds.utts[u]!r} -> {original['hyps'][u][0]!r} / {got['hyps'][u][0]!r}"
        for u in sorted(ds.utts)))
    for utt in ds.utts:
        want_text, want_ids, want_score = original["hyps"][utt]
        text, ids, score = got["hyps"][utt]
        assert (text, ids) == (want_text, want_ids), (utt, original["hyps"][utt], got["hyps"][utt])
        assert score == pytest.approx(want_score, rel=1e-5, abs=1e-5), utt
    # and the packed weights are the trained ones, bit for bit
    a = torch.load(work / "exp_moved_away/asr/valid.loss.best.pth", map_location="cpu",
                   weights_only=True)
    b = torch.load(files["asr_model_file"], map_location="cpu", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# checkpoints that do not match the config are refused

def _edited_checkpoint(files, tmp_path, drop=None, add=None) -> Path:
    import torch

    state = torch.load(files["asr_model_file"], map_location="cpu", weights_only=True)
    if drop is not None:
        key = drop(state) if callable(drop) else drop
        assert key in state, (key, list(state)[:20])
        del state[key]
    if add is not None:
        state[add] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


def _speech2text(files, model_file):
    from espnet2.bin.asr_inference import Speech2Text

    return Speech2Text(asr_train_config=files["asr_train_config"], asr_model_file=model_file,
                       device="cpu", **DECODE)


def _first(prefix):
    return lambda state: next(k for k in state if k.startswith(prefix))


@pytest.mark.parametrize("where", ["encoder.", "decoder."])
def test_missing_key_is_refused_by_name(unpacked, tmp_path, where):
    _, files = unpacked
    import torch

    key = _first(where)(torch.load(files["asr_model_file"], map_location="cpu",
                                   weights_only=True))
    path = _edited_checkpoint(files, tmp_path, drop=key)
    with pytest.raises(RuntimeError, match=re.escape(key)):
        _speech2text(files, path)


@pytest.mark.parametrize("key", ["encoder.encoders.0.bogus.weight", "decoder.bogus_extra"])
def test_unexpected_key_is_refused_by_name(unpacked, tmp_path, key):
    _, files = unpacked
    path = _edited_checkpoint(files, tmp_path, add=key)
    with pytest.raises(RuntimeError, match=re.escape(key)):
        _speech2text(files, path)


# ESPnet's build_model_from_file loads with strict=False; for a model that contains espnet_mamba
# modules the plugin refuses a mismatch anywhere in the model (espnet_mamba.integration.
# checkpoint_guard wraps that classmethod and puts the check on the model's root), not only in
# its own encoder/decoder.
@pytest.mark.parametrize("key", ["ctc.ctc_lo.weight", "normalize.mean"])
def test_missing_key_outside_the_plugin_modules_is_refused(unpacked, tmp_path, key):
    from espnet_mamba.modules.strict_load import CheckpointMismatchError

    _, files = unpacked
    import torch

    state = torch.load(files["asr_model_file"], map_location="cpu", weights_only=True)
    if key not in state:  # e.g. global_mvn without buffers in the checkpoint
        pytest.skip(f"{key} is not in this checkpoint")
    path = _edited_checkpoint(files, tmp_path, drop=key)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[" + re.escape(repr(key))):
        _speech2text(files, path)


@pytest.mark.parametrize("key", ["ctc.bogus.weight", "bogus_top_level"])
def test_unexpected_key_outside_the_plugin_modules_is_refused(unpacked, tmp_path, key):
    from espnet_mamba.modules.strict_load import CheckpointMismatchError

    _, files = unpacked
    path = _edited_checkpoint(files, tmp_path, add=key)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \[" + re.escape(repr(key))):
        _speech2text(files, path)


def test_one_error_names_every_mismatched_key(unpacked, tmp_path):
    from espnet_mamba.modules.strict_load import CheckpointMismatchError

    import torch

    _, files = unpacked
    state = torch.load(files["asr_model_file"], map_location="cpu", weights_only=True)
    del state[_first("encoder.")(state)], state["ctc.ctc_lo.bias"]
    state["decoder.bogus_extra"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        _speech2text(files, path)
    msg = str(err.value)
    assert "'ctc.ctc_lo.bias'" in msg and "'decoder.bogus_extra'" in msg, msg
    assert "'encoder." in msg.split("unexpected")[0], msg
    assert str(path) in msg, msg  # and the file


def test_matching_checkpoint_still_loads_and_leaves_no_hooks(unpacked):
    _, files = unpacked
    s2t = _speech2text(files, files["asr_model_file"])
    model = s2t.asr_model
    assert type(model.encoder).__module__.startswith("espnet_mamba.")
    # the guard's hooks are gone again: the model is what stock ESPnet returns
    assert not model._load_state_dict_pre_hooks and not model._load_state_dict_post_hooks
    assert not hasattr(model, "_espnet_mamba_guard_handles")
    # and a later partial load by hand is the user's business (stock strict=False semantics)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("ctc.")}
    missing = model.load_state_dict(state, strict=False).missing_keys
    assert missing and all(k.startswith("ctc.") for k in missing)


def _rezip(zip_file: Path, out: Path, edit) -> Path:
    """A copy of a packed zip whose .pth member is replaced by edit(state)."""
    import io
    import zipfile

    import torch

    with zipfile.ZipFile(zip_file) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".pth"):
                state = edit(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
                buf = io.BytesIO()
                torch.save(state, buf)
                data = buf.getvalue()
            dst.writestr(info, data)
    return out


def test_from_pretrained_uses_the_same_guarded_loader(trained, unpacked, tmp_path, monkeypatch):
    """The model-zoo path, Speech2Text.from_pretrained(<zip>): espnet_model_zoo unpacks into
    ~/.cache/espnet_model_zoo (HOME is a fresh tmp dir here) and Speech2Text loads the model with
    the same build_model_from_file: a good zip loads, one without ctc.ctc_lo.weight is refused."""
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_mamba.modules.strict_load import CheckpointMismatchError

    work, _ = trained
    zip_file = work.parent / f"{work.name}_model.zip"  # written by the unpacked fixture
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    s2t = Speech2Text.from_pretrained(str(zip_file), device="cpu", **DECODE)
    assert type(s2t.asr_model.encoder).__module__.startswith("espnet_mamba.")
    assert str(tmp_path / "home") in str(s2t.asr_train_args.normalize_conf["stats_file"])

    def drop_ctc(state):
        del state["ctc.ctc_lo.weight"]
        return state

    bad = _rezip(zip_file, tmp_path / "bad_model.zip", drop_ctc)
    with pytest.raises(CheckpointMismatchError, match=re.escape("'ctc.ctc_lo.weight'")):
        Speech2Text.from_pretrained(str(bad), device="cpu", **DECODE)
