"""A packed model keeps decoding the same in later versions.

``tests/data/packed_compat/model.zip`` is a tiny samba_asr encoder + decoder trained and packed
with ESPnet's stock tools (``tools/make_compat_model.py`` regenerates it, with the hypotheses it
gave, ``hypotheses.json``, on the two stored utterances).  Loaded through
``Speech2Text.from_pretrained`` (the model-zoo path, no network), it must give the same
hypotheses, and its checkpoint must load strictly into the model its config rebuilds.  That
holds after a default changes because the config asr_train writes records every model option of
our encoders/decoders, defaults filled in, and the plugin version (integration/resolved_config.py):
checked here on the stored config, on the config of a fresh ``asr_train`` run, and in process on
every encoder/decoder and mixer.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from cli_data import train_args, write_dataset

DATA = Path(__file__).resolve().parent.parent / "data" / "packed_compat"
VERSION_KEY = "espnet_mamba_version"


def _stored():
    return json.loads((DATA / "hypotheses.json").read_text())


def _zip_member(suffix: str) -> bytes:
    with zipfile.ZipFile(DATA / "model.zip") as z:
        (name,) = [n for n in z.namelist() if n.endswith(suffix)]
        return z.read(name)


@pytest.fixture(scope="module")
def speech2text(tmp_path_factory):
    """Speech2Text.from_pretrained of the stored zip (espnet_model_zoo unpacks it under
    ~/.cache; HOME is a fresh directory)."""
    from espnet2.bin.asr_inference import Speech2Text

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        return Speech2Text.from_pretrained(str(DATA / "model.zip"), device="cpu",
                                           **_stored()["decode"])
    finally:
        if old is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old


def test_stored_model_is_small_and_records_its_version():
    assert (DATA / "model.zip").stat().st_size < 200_000
    config = yaml.safe_load(_zip_member("config.yaml"))
    for conf in ("encoder_conf", "decoder_conf"):
        assert config[conf][VERSION_KEY] == _stored()["espnet_mamba_version"], config[conf]
        assert config[conf]["mixer_conf"], config[conf]  # resolved: the mixer's options too


def test_stored_model_decodes_the_stored_hypotheses(speech2text):
    import soundfile

    stored = _stored()["hypotheses"]
    assert type(speech2text.asr_model.encoder).__module__.startswith("espnet_mamba.")
    got = {}
    for utt in stored:
        speech, rate = soundfile.read(DATA / f"{utt}.wav", dtype="float32")
        assert rate == 16000
        text, _, token_ids, hyp = speech2text(speech)[0]
        got[utt] = [text, [int(i) for i in token_ids], float(hyp.score)]
    for utt, (text, ids, score) in stored.items():
        assert got[utt][:2] == [text, ids], (utt, stored[utt], got[utt])
        assert got[utt][2] == pytest.approx(score, rel=1e-4, abs=1e-4), (utt, stored[utt],
                                                                          got[utt])
    assert any(text for text, _, _ in stored.values())  # a model that says something


def test_stored_weights_load_strictly(speech2text):
    import io

    state = torch.load(io.BytesIO(_zip_member(".pth")), map_location="cpu", weights_only=True)
    result = speech2text.asr_model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_a_loaded_config_keeps_the_version_it_records(tmp_path, caplog):
    """An older recorded version is accepted by the stock loader (the key is taken out before
    the constructor sees it), kept in the loaded namespace and logged."""
    from espnet2.bin.asr_inference import Speech2Text
    from espnet2.main_funcs.pack_funcs import unpack

    files = unpack(DATA / "model.zip", tmp_path)
    config = yaml.safe_load(Path(files["asr_train_config"]).read_text())
    config["encoder_conf"][VERSION_KEY] = "0.0.1"
    Path(files["asr_train_config"]).write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.INFO, logger="espnet_mamba"):
        s2t = Speech2Text(asr_train_config=files["asr_train_config"],
                          asr_model_file=files["asr_model_file"], device="cpu")
    assert s2t.asr_train_args.encoder_conf[VERSION_KEY] == "0.0.1"
    assert "trained with espnet_mamba 0.0.1" in caplog.text, caplog.text


def test_an_option_newer_than_the_recorded_version_keeps_its_old_meaning(speech2text):
    """The stored config (0.1.0) predates samba_asr's ``cross_connection``: it is read as
    ``prefix`` (SambaASRDecoder.OLD_CONFIG_DEFAULTS), the reading that model was trained with,
    while a config without a recorded version (a training YAML) gets today's default."""
    from espnet_mamba.decoders.samba_asr import DEFAULT_CROSS_CONNECTION, SambaASRDecoder
    from espnet_mamba.integration.resolved_config import build_recording_options

    stored = yaml.safe_load(_zip_member("config.yaml"))["decoder_conf"]
    assert "cross_connection" not in stored and DEFAULT_CROSS_CONNECTION != "prefix"
    decoder = speech2text.asr_model.decoder
    assert decoder.cross_connection == "prefix" and decoder.cross_attention is None
    assert speech2text.asr_train_args.decoder_conf["cross_connection"] == "prefix"

    class Task:  # the one class choice build_recording_options looks at
        class_choices_list = [type("Choices", (), {
            "name": "decoder", "classes": {"samba_asr": SambaASRDecoder}})]

    built = {}
    for conf in ({"num_blocks": 1}, {"num_blocks": 1, VERSION_KEY: "0.1.0"}):
        args = type("Args", (), {"decoder": "samba_asr", "decoder_conf": dict(conf)})()
        build_recording_options(
            lambda a: built.setdefault(VERSION_KEY in conf, SambaASRDecoder(
                8, 16, **a.decoder_conf)), Task, args)
    assert built[False].cross_connection == DEFAULT_CROSS_CONNECTION
    assert built[True].cross_connection == "prefix"


# --------------------------------------------------------------------------------------------
# what a training run records

def _plugin_classes():
    from espnet_mamba.integration.names import DECODERS, ENCODERS
    from espnet_mamba.integration.registration import load_class

    return {f"{kind}:{name}": load_class(target)
            for kind, table in (("encoder", ENCODERS), ("decoder", DECODERS))
            for name, target in table.items()}


def _required(cls) -> dict:
    need = {"input_size": 20, "vocab_size": 8, "encoder_output_size": 16}
    return {k: v for k, v in need.items() if k in inspect.signature(cls).parameters}


@pytest.mark.parametrize("mixer", ["mamba", "mamba2"])
@pytest.mark.parametrize("name", sorted(_plugin_classes()))
def test_resolved_options_build_the_same_model(name, mixer):
    from espnet_mamba.integration.resolved_config import (
        execution_options,
        resolved_options,
    )

    cls = _plugin_classes()[name]
    conf = {"output_size": 16, "num_blocks": 1, "mixer": mixer, "d_state": 8}
    if "attention_heads" in inspect.signature(cls).parameters:
        conf["attention_heads"] = 2
    if mixer == "mamba2":
        conf["mixer_conf"] = {"headdim": 8}
    conf = {k: v for k, v in conf.items() if k in inspect.signature(cls).parameters}
    resolved = resolved_options(cls, {**conf, VERSION_KEY: "0.0.1"})
    # every model option with a default is written out; ESPnet's own arguments are not
    for pname, p in inspect.signature(cls).parameters.items():
        if p.default is not p.empty and pname not in execution_options():
            assert pname in resolved, (name, pname)
    assert VERSION_KEY not in resolved and not set(_required(cls)) & set(resolved)
    assert "dt_min" in resolved["mixer_conf"] and resolved["mixer_conf"].get("headdim") == (
        8 if mixer == "mamba2" else None)
    yaml.safe_load(yaml.safe_dump(resolved))  # plain YAML (tuples written as lists)
    torch.manual_seed(0)
    a = cls(**_required(cls), **conf)
    torch.manual_seed(0)
    b = cls(**_required(cls), **resolved)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _cli(args, cwd: Path, log: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ESPNET_MAMBA_DISABLE_HOOK", None)
    proc = subprocess.run([sys.executable, "-m", "espnet2.bin.asr_train", *map(str, args)],
                          cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300, check=False)
    log.write_text(proc.stdout)
    assert proc.returncode == 0, "\n".join(proc.stdout.splitlines()[-40:])


@pytest.mark.slow
def test_asr_train_writes_resolved_options_and_version(tmp_path):
    """A fresh asr_train run (``--dry_run``: the model is built and config.yaml written as in
    training) records every option and the version; ``asr_train --config`` of that config runs
    and writes the same options again."""
    import espnet_mamba
    from espnet_mamba.integration.resolved_config import execution_options

    ds = write_dataset(tmp_path / "data", repeat=1)
    common = [*train_args(ds), "--frontend_conf", "n_mels=20", "--dry_run", "true"]
    _cli([*common, "--encoder", "samba_asr", "--encoder_conf", "output_size=16",
          "--encoder_conf", "num_blocks=1", "--decoder", "speech_mamba",
          "--decoder_conf", "num_blocks=1", "--decoder_conf", "mixer=mamba2",
          "--decoder_conf", "mixer_conf={headdim: 8}", "--output_dir", tmp_path / "exp"],
         tmp_path, tmp_path / "first.log")
    config = yaml.safe_load((tmp_path / "exp" / "config.yaml").read_text())
    classes = _plugin_classes()
    for conf, cls in (("encoder_conf", classes["encoder:samba_asr"]),
                      ("decoder_conf", classes["decoder:speech_mamba"])):
        written = config[conf]
        assert written[VERSION_KEY] == espnet_mamba.__version__, written
        for pname, p in inspect.signature(cls).parameters.items():
            if p.default is not p.empty and pname not in execution_options():
                assert pname in written, (conf, pname, written)
    assert config["encoder_conf"]["input_layer"] == "conv2d"  # a default, written out
    assert config["decoder_conf"]["mixer_conf"]["headdim"] == 8  # given, kept
    assert "chunk_size" in config["decoder_conf"]["mixer_conf"]  # a mixer default
    assert "dt_rank" in config["encoder_conf"]["mixer_conf"]

    # the written config alone (its data paths included), as a fine-tuning run reads it; less
    # the keys ESPnet itself adds after parsing, which its own parser refuses (stock behaviour)
    reread = {k: v for k, v in config.items()
              if k not in ("required", "version", "distributed")}
    (tmp_path / "reread.yaml").write_text(yaml.safe_dump(reread, sort_keys=False))
    _cli(["--config", tmp_path / "reread.yaml", "--output_dir", tmp_path / "again"],
         tmp_path, tmp_path / "again.log")
    again = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    for conf in ("encoder_conf", "decoder_conf"):
        assert again[conf] == config[conf]
