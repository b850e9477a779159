"""Execution options (modules/execution.py): how a model runs, never what it computes.  Each is
an option of the encoders/decoders with a default, overridden at run time by the environment
(read at build) or by ``set_execution`` on a built model; bad values are named with their
source; no package module or benchmark assigns another module's attributes."""

import ast
from pathlib import Path

import pytest
import torch

from espnet_mamba.decoders.samba_asr import SambaASRDecoder
from espnet_mamba.decoders.speech_mamba import SpeechMambaDecoder
from espnet_mamba.encoders.samba_asr import SambaASREncoder
from espnet_mamba.encoders.speech_mamba import SpeechMambaEncoder
from espnet_mamba.modules.execution import (
    CONFIG_FIELDS, Execution, environment_overrides, set_execution,
)
from espnet_mamba.modules.option_rules import BadOptionError
from tensor_checks import rel_err

ROOT = Path(__file__).resolve().parents[2]


def executions(model) -> set:
    return {m.execution for m in model.modules() if "execution" in m.__dict__}


def test_every_execution_option_is_an_option_of_the_models():
    """The config fields are constructor options of the encoders (all) and decoders (those that
    apply to them), with the documented defaults."""
    import inspect
    for cls in (SambaASREncoder, SpeechMambaEncoder):
        params = inspect.signature(cls).parameters
        assert set(CONFIG_FIELDS) <= set(params), cls
        assert {k: params[k].default for k in CONFIG_FIELDS} == {
            "backend": None, "fused_kernels": True, "merge_directions": "auto",
            "packed_mixer": "fused", "cuda_graphs": False, "pack_sequences": False}
    for cls in (SambaASRDecoder, SpeechMambaDecoder):
        params = inspect.signature(cls).parameters
        assert params["cuda_graphs"].default is True and params["backend"].default is None


def test_one_execution_object_per_model_part():
    enc = SambaASREncoder(20, output_size=16, num_blocks=2, d_state=4, backend="torch",
                          merge_directions="never")
    (ex,) = executions(enc)
    assert ex == Execution(backend="torch", merge_directions="never")
    assert len([m for m in enc.modules() if "execution" in m.__dict__]) > 5


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("backend=torch", {"backend": "torch"}),
    (" cuda_graphs = false , fused_kernels=0,merge_directions=always ",
     {"cuda_graphs": False, "fused_kernels": False, "merge_directions": "always"}),
    ("pack_sequences=true,packed_mixer=unfused",
     {"pack_sequences": True, "packed_mixer": "unfused"}),
])
def test_environment_overrides_parse(text, expected):
    assert environment_overrides({"ESPNET_MAMBA_EXECUTION": text}) == expected


@pytest.mark.parametrize("environ, message", [
    ({"ESPNET_MAMBA_EXECUTION": "backend"}, r"'backend' is not key=value"),
    ({"ESPNET_MAMBA_EXECUTION": "cuda_graph=false"},
     r"unknown execution option 'cuda_graph'; valid: backend, fused_kernels"),
    ({"ESPNET_MAMBA_EXECUTION": "packed_mixer=fast"},
     r"packed_mixer = 'fast' must be one of 'fused', 'unfused', 'padded'"),
    ({"ESPNET_MAMBA_EXECUTION": "cuda_graphs=maybe"}, r"cuda_graphs = 'maybe' must be true"),
    ({"ESPNET_MAMBA_BACKEND": "gpu"}, r"^ESPNET_MAMBA_BACKEND='gpu': unknown Mamba backend"),
    ({"ESPNET_MAMBA_BACKEND": "cuda", "ESPNET_MAMBA_EXECUTION": "backend=torch"},
     r"name different backends"),
])
def test_bad_environment_is_named(environ, message):
    with pytest.raises(BadOptionError, match=message):
        environment_overrides(environ)


def test_environment_overrides_the_config_at_build(monkeypatch):
    """A packed config.yaml that says backend: cuda and cuda_graphs: true runs as the machine
    says, without editing it; options the environment does not set keep the config's value."""
    monkeypatch.setenv("ESPNET_MAMBA_EXECUTION", "backend=torch,cuda_graphs=false")
    enc = SambaASREncoder(20, output_size=16, num_blocks=1, backend="cuda", cuda_graphs=True,
                          merge_directions="never")
    assert executions(enc) == {Execution(backend="torch", merge_directions="never")}
    assert enc.training_graphs is None
    dec = SpeechMambaDecoder(10, 16, attention_heads=2, num_blocks=1, backend="cuda")
    assert executions(dec) == {Execution(backend="torch", cuda_graphs=False)}


def test_bad_environment_fails_at_build(monkeypatch):
    monkeypatch.setenv("ESPNET_MAMBA_EXECUTION", "packed_mixer=fast")
    with pytest.raises(BadOptionError, match="^ESPNET_MAMBA_EXECUTION='packed_mixer=fast'"):
        SambaASREncoder(20, output_size=16, num_blocks=1)


def test_bad_config_value_names_the_option():
    with pytest.raises(BadOptionError,
                       match=r"^encoder_conf.merge_directions = 'sometimes': must be one of"):
        SambaASREncoder(20, output_size=16, num_blocks=1, merge_directions="sometimes")


def test_set_execution_refuses_unknown_options_and_keeps_the_model():
    enc = SambaASREncoder(20, output_size=16, num_blocks=1)
    before = executions(enc)
    with pytest.raises(TypeError, match="unknown execution option.*backendd"):
        set_execution(enc, backendd="torch")
    with pytest.raises(ValueError, match="backend = 'gpu': unknown Mamba backend"):
        set_execution(enc, backend="gpu")
    assert executions(enc) == before


@pytest.mark.parametrize("cls, conf", [
    (SambaASREncoder, {}),
    (SambaASREncoder, {"mixer": "mamba2", "mixer_conf": {"headdim": 8}, "d_state": 8}),
    (SpeechMambaEncoder, {"attention_heads": 2}),
])
def test_every_execution_setting_computes_the_same(cls, conf):
    """On the PyTorch path, fp64: merged or separate directions, packed or padded batches
    (each packed_mixer) give the same outputs on valid frames from the same weights."""
    torch.manual_seed(0)
    enc = cls(20, output_size=16, num_blocks=2, d_state=conf.pop("d_state", 4),
              dropout_rate=0.0, **conf).double().eval()
    x = torch.randn(3, 40, 20, dtype=torch.float64)
    ilens = torch.tensor([40, 27, 13])
    def valid_outputs():
        y, olens, _ = enc(x, ilens)
        return torch.cat([y[i, :n] for i, n in enumerate(olens.tolist())])

    with torch.no_grad():
        ref = valid_outputs()
        for changes in ({"merge_directions": "never"}, {"merge_directions": "always"},
                        {"fused_kernels": False},
                        {"pack_sequences": True, "packed_mixer": "fused"},
                        {"pack_sequences": True, "packed_mixer": "unfused"},
                        {"pack_sequences": True, "packed_mixer": "padded"},
                        {"norm_kernel_min_numel": 0}):
            set_execution(enc, **{**Execution().__dict__, **changes})
            assert rel_err(valid_outputs(), ref) < 1e-12, changes


def _assigned_module_attributes(path: Path) -> list[str]:
    """``module.NAME = ...`` where ``module`` is imported in this file."""
    tree = ast.parse(path.read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        for t in targets:
            for leaf in (t.elts if isinstance(t, ast.Tuple) else [t]):
                if (isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name)
                        and leaf.value.id in modules):
                    found.append(f"{path.relative_to(ROOT)}:{leaf.lineno} "
                                 f"{leaf.value.id}.{leaf.attr}")
    return found


def test_no_module_switches_are_assigned():
    """Behaviour is chosen by options: neither the package (apart from its ESPnet integration,
    whose patches of ESPnet's globals are listed in ARCHITECTURE.md) nor the benchmarks set
    attributes of other modules."""
    paths = [p for p in (ROOT / "espnet_mamba").rglob("*.py") if "integration" not in p.parts]
    paths += list((ROOT / "benchmarks").rglob("*.py"))
    found = [hit for p in paths if "__pycache__" not in p.parts
             for hit in _assigned_module_attributes(p)]
    assert not found, found
