"""The package's layers, checked on its import graph (every import statement, also those inside
functions): ops -> modules -> graphs -> encoders / decoders -> integration, each importing only
from layers below it or from its own package.  ESPnet is imported only by encoders, decoders and
the integration package; the CUDA kernels (mamba-ssm, causal-conv1d, triton) only by ops."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "espnet_mamba"
LAYER = {"ops": 0, "modules": 1, "graphs": 2, "encoders": 3, "decoders": 3, "integration": 4}
ESPNET = ("espnet2", "espnet")
KERNELS = ("mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda", "triton")


def imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file (of dotted name ``module``)."""
    module = module or ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this file's package
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}" if node.module is None else base)
                      for a in node.names]
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "espnet_mamba" and parts[1] in LAYER else None


def files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_file_belongs_to_a_layer():
    loose = [str(p.relative_to(PACKAGE)) for p in files()
             if len(p.relative_to(PACKAGE).parts) == 1 and p.name != "__init__.py"]
    assert not loose, f"modules outside any layer: {loose}"
    assert {p.relative_to(PACKAGE).parts[0] for p in files() if p.parent != PACKAGE} == set(LAYER)


def violations(own: str | None, found, where: str) -> list[str]:
    """What breaks the rules among the imports ``found`` of a file in layer ``own``."""
    bad = []
    if own is None:  # espnet_mamba/__init__.py: the public entry, may reach the top layer
        return bad
    for line, name in found:
        top, target = name.split(".")[0], layer_of(name)
        at = f"{where}:{line} imports {name}"
        if target is not None and target != own and LAYER[target] >= LAYER[own]:
            bad.append(f"{at} ({own} may import only layers below it)")
        if top in ESPNET and own not in ("encoders", "decoders", "integration"):
            bad.append(f"{at} (ESPnet only in encoders, decoders, integration)")
        if top in KERNELS and own != "ops":
            bad.append(f"{at} (kernels only in ops)")
    return bad


@pytest.mark.parametrize("path", files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_only(path):
    rel = path.relative_to(PACKAGE)
    own = rel.parts[0] if len(rel.parts) > 1 else None
    bad = violations(own, imports(path), str(rel))
    assert not bad, "\n".join(bad)


def test_the_checker_sees_violations(tmp_path):
    """Relative, nested and from-imports are resolved, and each rule fires."""
    src = tmp_path / "fake.py"
    src.write_text("from ..encoders import stack\nfrom .norm import RMSNorm\n"
                   "def f():\n    from espnet2.tasks import asr\n    import mamba_ssm\n")
    found = imports(src, "espnet_mamba.modules.fake")
    assert [n for _, n in found] == ["espnet_mamba.encoders", "espnet_mamba.modules.norm",
                                     "espnet2.tasks", "mamba_ssm"]
    bad = violations("modules", found, "fake.py")
    assert len(bad) == 3 and "layers below" in bad[0] and "ESPnet only" in bad[1] \
        and "kernels only" in bad[2], bad
    assert violations("integration", found[:3], "fake.py") == []
    sideways = imports(src, "espnet_mamba.decoders.fake")[:1]
    assert violations("decoders", sideways, "fake.py"), "decoders must not import encoders"
