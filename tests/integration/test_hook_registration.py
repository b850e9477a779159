"""Registration into stock ESPnet through the installed .pth hook, in fresh interpreters: what
the hook imports at start-up (nothing of torch or ESPnet; nothing at all when disabled), the
plugin's classes in every task's choices, name clashes, registering twice."""

import os
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from espnet_mamba.integration import names, registration

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


def test_disabled_hook_imports_and_installs_nothing():
    """ESPNET_MAMBA_DISABLE_HOOK=1: the .pth line reads the variable and stops; no module of
    the plugin is imported, no finder and no excepthook are installed, ESPnet stays stock."""
    env = dict(ENV, **{names.DISABLE_ENV: "1"})
    out = run("import sys; print(sorted(m for m in sys.modules if m.startswith('espnet_mamba')),"
              " any(type(f).__name__ == '_PostImportFinder' for f in sys.meta_path),"
              " sys.excepthook is sys.__excepthook__)", env=env)
    assert out.split() == ["[]", "False", "True"], out


def test_enabled_hook_imports_only_its_tables_at_startup():
    """The hook's start-up cost: `python -c pass` imports exactly the hook's own small modules
    more than the same interpreter with the hook disabled (no torch, no ESPnet, no importlib
    machinery beyond what Python itself loads)."""
    code = "import sys; print(' '.join(sorted(sys.modules)))"
    on = set(run(code).split())
    off = set(run(code, env=dict(ENV, **{names.DISABLE_ENV: "1"})).split())
    assert on - off == {"espnet_mamba", "espnet_mamba.integration",
                        "espnet_mamba.integration.import_hook",
                        "espnet_mamba.integration.names"}, sorted(on - off)


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
