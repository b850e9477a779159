"""Registration into stock ESPnet through the installed .pth hook, in fresh interpreters."""

import os
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from espnet_mamba.integration import checkpoint_guard, names, registration

ENV = {k: v for k, v in os.environ.items() if k != names.DISABLE_ENV}


def run(code=None, args=None, env=ENV, timeout=300):
    cmd = [sys.executable] + (["-c", code] if code else args)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_pth_file_is_installed():
    pth = Path(sysconfig.get_paths()["purelib"]) / "espnet_mamba_hook.pth"
    assert pth.is_file(), "install the package (pip install . or -e .) before running tests"
    assert "install_import_hook" in pth.read_text()


def test_hook_costs_nothing_at_startup():
    out = run("import sys; print('torch' in sys.modules, 'espnet2' in sys.modules, "
              "any(type(f).__name__ == '_PostImportFinder' for f in sys.meta_path))")
    assert out.split() == ["False", "False", "True"]


CHECK_ALL = """
import importlib
from espnet_mamba.integration.names import REGISTRY, ENCODERS, DECODERS
for task, attrs in REGISTRY.items():
    mod = importlib.import_module(task)
    for attr, names in attrs.items():
        classes = getattr(mod, attr).classes
        for name, target in names.items():
            cls = classes[name]
            assert f"{cls.__module__}:{cls.__name__}" == target, (task, attr, name)
print("registered", len(REGISTRY))
"""


def test_registered_into_every_task_on_import():
    assert run(CHECK_ALL).strip() == f"registered {len(names.REGISTRY)}"


def test_stock_print_config_sees_plugin_classes():
    out = run(args=["-m", "espnet2.bin.asr_train", "--print_config", "--encoder", "samba_asr",
                    "--decoder", "speech_mamba"])
    assert "encoder: samba_asr" in out and "decoder: speech_mamba" in out
    assert "num_blocks: 12" in out and "d_state: 16" in out  # defaults of our constructors


def test_asr_inference_module_sees_plugin_classes():
    out = run("import espnet2.bin.asr_inference, espnet2.tasks.asr as t;"
              "print(sorted(k for k in t.decoder_choices.classes if k in "
              "('samba_asr', 'speech_mamba')))")
    assert out.strip() == "['samba_asr', 'speech_mamba']"


def test_disabled_hook_and_explicit_register():
    env = dict(ENV, **{names.DISABLE_ENV: "1"})
    out = run("import espnet2.tasks.asr as t; print('samba_asr' in t.encoder_choices.classes);"
              "import espnet_mamba; espnet_mamba.register();"
              "print('samba_asr' in t.encoder_choices.classes)", env=env)
    assert out.split() == ["False", "True"]


def test_name_clash_is_an_error(monkeypatch):
    from espnet2.train.class_choices import ClassChoices

    class Other:
        pass

    fake = types.ModuleType("fake_task")
    fake.encoder_choices = ClassChoices("encoder", {"samba_asr": Other})
    monkeypatch.setitem(names.REGISTRY, "fake_task", {"encoder_choices": names.ENCODERS})
    with pytest.raises(registration.RegistrationError, match="already has .*Other"):
        registration.register_into(fake)


def test_registering_twice_is_harmless():
    import espnet2.tasks.asr as asr
    registration.register_into(asr)
    registration.register_into(asr)
    assert asr.encoder_choices.classes["samba_asr"].__name__ == "SambaASREncoder"


# --------------------------------------------------------------------------------------------
# whole-model checkpoint key guard (checkpoint_guard.guard_checkpoint_loading, modules/strict_load.py)

TOKENS = ["<blank>", "<unk>", "a", "b", "c", "<space>", "<sos/eos>"]


def _model_files(tmp_path, encoder, decoder, encoder_conf, decoder_conf):
    """config.yaml + model.pth of an untrained ASR model built by ESPnet's ASRTask."""
    import torch
    import yaml
    from espnet2.tasks.asr import ASRTask

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tokens.txt").write_text("".join(t + "\n" for t in TOKENS))
    cli = ["--token_list", str(tmp_path / "tokens.txt"), "--token_type", "char",
           "--encoder", encoder, "--decoder", decoder, "--frontend_conf", "n_mels=20"]
    for part, conf in (("encoder", encoder_conf), ("decoder", decoder_conf)):
        cli += [x for k, v in conf.items() for x in (f"--{part}_conf", f"{k}={v}")]
    args = ASRTask.get_parser().parse_args(cli)
    model = ASRTask.build_model(args)
    assert not model._load_state_dict_post_hooks  # build_model outside loading: no hooks
    config, weights = tmp_path / "config.yaml", tmp_path / "model.pth"
    config.write_text(yaml.safe_dump(dict(vars(args), token_list=TOKENS), sort_keys=False))
    torch.save(model.state_dict(), weights)
    return config, weights


PLUGIN_MODEL = ("samba_asr", "samba_asr", {"output_size": 16, "num_blocks": 1, "d_state": 4},
                {"num_blocks": 1, "d_state": 4})
STOCK_MODEL = ("transformer", "transformer",
               {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 1},
               {"attention_heads": 2, "linear_units": 32, "num_blocks": 1})


def _edited(weights, tmp_path, drop=(), add=()):
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    for k in drop:
        del state[k]
    for k in add:
        state[k] = torch.zeros(2)
    out = tmp_path / f"edited_{len(list(tmp_path.iterdir()))}.pth"
    torch.save(state, out)
    return out


def test_checkpoint_guard_wraps_each_task_class_once():
    import espnet2.tasks.asr as asr
    import espnet2.tasks.slu as slu

    for cls in (asr.ASRTask, slu.SLUTask):
        for name in ("build_model_from_file", "build_model"):
            assert getattr(getattr(cls, name).__func__, checkpoint_guard._GUARD_MARK, False), (cls, name)
    # SLUTask inherits ASRTask's build_model_from_file wrapper: not wrapped a second time
    assert slu.SLUTask.build_model_from_file.__func__ is asr.ASRTask.build_model_from_file.__func__
    assert checkpoint_guard.guard_checkpoint_loading(asr) == []
    assert checkpoint_guard.guard_checkpoint_loading(slu) == []
    registration.register_into(asr)
    assert not getattr(asr.ASRTask.build_model_from_file.__func__.__wrapped__,
                       checkpoint_guard._GUARD_MARK, False)  # one layer of wrapping only


def test_plugin_model_refuses_a_mismatch_anywhere(tmp_path):
    from espnet2.tasks.asr import ASRTask

    from espnet_mamba.modules.strict_load import CheckpointMismatchError

    config, weights = _model_files(tmp_path / "m", *PLUGIN_MODEL)
    model, _ = ASRTask.build_model_from_file(config, weights)  # a matching checkpoint loads
    assert not model._load_state_dict_pre_hooks and not model._load_state_dict_post_hooks
    for drop, add, named in ((["ctc.ctc_lo.weight"], [], "missing keys ['ctc.ctc_lo.weight']"),
                             ([], ["ctc.extra"], "unexpected keys ['ctc.extra']"),
                             ([], ["encoder.extra"], "unexpected keys ['encoder.extra']")):
        bad = _edited(weights, tmp_path, drop, add)
        with pytest.raises(CheckpointMismatchError) as err:
            ASRTask.build_model_from_file(config, bad)
        assert named in str(err.value) and str(bad) in str(err.value), str(err.value)


def test_long_key_lists_are_shortened(tmp_path):
    from espnet2.tasks.asr import ASRTask

    from espnet_mamba.modules.strict_load import MAX_LISTED, CheckpointMismatchError

    config, weights = _model_files(tmp_path / "m", *PLUGIN_MODEL)
    import torch
    n = len(torch.load(weights, weights_only=True))
    with pytest.raises(CheckpointMismatchError, match=rf"\.\.\.\] \({n} in all\)") as err:
        ASRTask.build_model_from_file(config, _edited(weights, tmp_path, add=[
            f"x{i}" for i in range(3)], drop=list(torch.load(weights, weights_only=True))))
    assert str(err.value).count("'") <= 2 * (MAX_LISTED + 3), str(err.value)


def test_stock_model_loads_as_in_stock_espnet(tmp_path):
    """No plugin class in the model: ESPnet's strict=False semantics, untouched."""
    from espnet2.tasks.asr import ASRTask

    config, weights = _model_files(tmp_path / "m", *STOCK_MODEL)
    bad = _edited(weights, tmp_path, drop=["ctc.ctc_lo.weight"], add=["ctc.extra"])
    model, _ = ASRTask.build_model_from_file(config, bad)  # silently, as ESPnet does
    assert not model._load_state_dict_pre_hooks and not model._load_state_dict_post_hooks
