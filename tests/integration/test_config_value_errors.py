"""Bad option values, as users of asr_train / asr_inference meet them: the error comes when the
model is built (ESPnet's ASRTask.build_model, before any data is read) and names the option as
the config writes it (``encoder_conf.num_blocks``, ``decoder_conf.mixer_conf.headdim``), its
value and the valid range (modules/option_rules.py).  A model of ``backend: cuda`` decodes on a
CPU through the PyTorch path, with one warning.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from espnet_mamba.modules.option_rules import BadOptionError

# ESPnet's ASRTask and a token list: the fixtures of the unknown-option tests
from test_config_option_errors import asr_task, token_list  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import long_recording_cpu as bench  # noqa: E402

TINY = {"encoder": "samba_asr", "decoder": "samba_asr", "frontend_conf": {"n_mels": 20},
        "encoder_conf": {"output_size": 16, "num_blocks": 1, "d_state": 4},
        "decoder_conf": {"num_blocks": 1, "d_state": 4}}

CASES = [  # (part, option, value, other options of that part, message)
    ("encoder", "num_blocks", 0, {}, "encoder_conf.num_blocks = 0: must be an integer >= 1"),
    ("encoder", "d_state", -1, {}, "encoder_conf.d_state = -1: must be an integer >= 1"),
    ("encoder", "output_size", 0, {}, "encoder_conf.output_size = 0: must be an integer >= 1"),
    ("encoder", "expand", 0, {}, "encoder_conf.expand = 0: must be a number > 0"),
    ("encoder", "d_conv", 0, {}, "encoder_conf.d_conv = 0: must be an integer >= 1"),
    ("encoder", "backend", "gpu", {},
     "encoder_conf.backend = 'gpu': must be one of 'auto', 'torch', 'cuda'"),
    ("encoder", "num_blocks", "two", {},  # typeguard's error named only the argument
     "encoder_conf.num_blocks = 'two': must be an integer >= 1"),
    ("encoder", "bidirectional", "no", {},
     "encoder_conf.bidirectional = 'no': must be of type bool"),
    ("decoder", "num_blocks", 0, {}, "decoder_conf.num_blocks = 0: must be an integer >= 1"),
    ("decoder", "d_conv", 0, {}, "decoder_conf.d_conv = 0: must be an integer >= 1"),
    ("decoder", "mixer_conf", {"headdim": 0}, {"mixer": "mamba2"},
     "decoder_conf.mixer_conf.headdim = 0: must be an integer >= 1"),
    ("decoder", "speech_summary", "yes", {},
     "decoder_conf.speech_summary = 'yes': must be of type bool"),
]


def build(asr_task, conf: dict, token_list: Path, tmp_path: Path):  # noqa: F811
    """What asr_train does with --config: parse, build."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(conf))
    args = asr_task.get_parser().parse_args(["--config", str(config),
                                             "--token_list", str(token_list)])
    return asr_task.build_model(args)


def with_option(part: str, option: str, value, others: dict) -> dict:
    conf = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY.items()}
    conf[f"{part}_conf"].update(others, **{option: value})
    return conf


@pytest.mark.parametrize("part, option, value, others, message", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_bad_value_is_named_by_build_model(part, option, value, others, message, asr_task,
                                           token_list, tmp_path):  # noqa: F811
    with pytest.raises(BadOptionError) as info:
        build(asr_task, with_option(part, option, value, others), token_list, tmp_path)
    assert str(info.value).startswith(message), str(info.value)


def test_good_config_builds(asr_task, token_list, tmp_path):  # noqa: F811
    model = build(asr_task, with_option("decoder", "mixer_conf", {"headdim": 8},
                                        {"mixer": "mamba2"}), token_list, tmp_path)
    assert len(model.encoder.encoders) == 1 and model.decoder.decoders[0].layer.headdim == 8


def test_bad_environment_backend_names_the_variable(asr_task, token_list, tmp_path,
                                                    monkeypatch):  # noqa: F811
    monkeypatch.setenv("ESPNET_MAMBA_BACKEND", "bogus")
    with pytest.raises(BadOptionError, match=r"^ESPNET_MAMBA_BACKEND='bogus': unknown Mamba "
                                             r"backend; valid: auto, torch, cuda"):
        build(asr_task, TINY, token_list, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("conf, env, message", [
    (with_option("encoder", "num_blocks", 0, {}), {},
     "BadOptionError: encoder_conf.num_blocks = 0: must be an integer >= 1"),
    (TINY, {"ESPNET_MAMBA_BACKEND": "bogus"},
     "BadOptionError: ESPNET_MAMBA_BACKEND='bogus': unknown Mamba backend"),
], ids=["num_blocks", "environment"])
def test_asr_train_fails_on_the_option_before_reading_data(conf, env, message, token_list,
                                                           tmp_path):  # noqa: F811
    import os

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(conf))
    missing = tmp_path / "no_such_data"  # never read: the model is built first
    run = subprocess.run(
        [sys.executable, "-m", "espnet2.bin.asr_train", "--config", str(config),
         "--token_list", str(token_list), "--output_dir", str(tmp_path / "exp"),
         "--train_data_path_and_name_and_type", f"{missing}/wav.scp,speech,sound",
         "--train_data_path_and_name_and_type", f"{missing}/text,text,text",
         "--train_shape_file", f"{missing}/speech_shape",
         "--valid_data_path_and_name_and_type", f"{missing}/wav.scp,speech,sound",
         "--valid_shape_file", f"{missing}/speech_shape"],
        capture_output=True, text=True, env={**os.environ, **env})
    assert run.returncode != 0
    assert "in build_model" in run.stderr and "No such file" not in run.stderr, \
        run.stderr[-3000:]
    assert message in run.stderr, run.stderr[-3000:]


def test_cuda_backend_model_decodes_on_cpu_with_one_notice(tmp_path, caplog):
    """A model configured with backend: cuda (both parts), decoded by ESPnet's Speech2Text on a
    CPU: the PyTorch path, one warning, a hypothesis."""
    from espnet2.bin.asr_inference import Speech2Text
    from espnet_mamba.ops import backend as ops_backend

    config, model, _ = bench.build_model_files(
        tmp_path, encoder_conf=dict(bench.TINY_CONF, backend="cuda"),
        decoder_conf=dict(bench.TINY_DECODER_CONF, backend="cuda"))
    ops_backend._warn_cpu_fallback.cache_clear()
    s2t = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu",
                      beam_size=2, ctc_weight=0.3, maxlenratio=0.02, nbest=1)
    assert s2t.asr_model.encoder.encoders[0].layer.forward_mixer.backend == "cuda"
    with caplog.at_level(logging.WARNING):
        result = s2t(np.random.default_rng(0).standard_normal(16000).astype(np.float32))
    assert result[0][2]  # token ids of the best hypothesis
    notices = [r.getMessage() for r in caplog.records if "backend='cuda'" in r.getMessage()]
    assert notices == ["backend='cuda' but the model runs on cpu: using the PyTorch path (the "
                       "CUDA kernels need CUDA tensors); set backend: auto to silence this"]
