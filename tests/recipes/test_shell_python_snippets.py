"""The Python that the shell scripts carry inline (``python3 -c '...'`` and ``<<'EOF'`` here-documents
fed to a Python interpreter) compiles.  A script only runs such code on the machine it is meant for
(a GPU machine, a recipe stage), so a syntax error there would otherwise show first on that machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted({*REPO.glob("tools/**/*.sh"), *REPO.glob("egs2/*/asr1/*.sh"), *REPO.glob(".ci/*")})
# -c with a single-quoted program (bash single quotes cannot hold a quote: the program ends at the next)
INLINE = re.compile(r"""(?:python3?|"\$python"|\$PY|"\$PY"|\$\{PYTHON[^}]*\}) +-c +'([^']*)'""")
# a here-document read by Python: python3 - ... <<'EOF' ... EOF (the command's line may go on
# after the delimiter and over continuation lines; the document starts after them)
HEREDOC = re.compile(r"""(?:python3?|"\$python"|\$PY|"\$PY"|/bin/python")[^\n]* - [^\n]*<<'(\w+)'"""
                     r"""(?:[^\n]*\\\n)*[^\n]*\n(.*?)\n\1\n""", re.DOTALL)


def snippets():
    for script in SCRIPTS:
        if not script.is_file():
            continue
        text = script.read_text(errors="replace")
        for kind, pattern in (("-c", INLINE), ("heredoc", HEREDOC)):
            for m in pattern.finditer(text):
                code = m.group(1) if kind == "-c" else m.group(2)
                line = text.count("\n", 0, m.start()) + 1
                yield pytest.param(code, id=f"{script.relative_to(REPO)}:{line}")


CASES = list(snippets())


def test_scripts_carry_python():
    # the patterns find what they are meant to (the kernel check of offline_run.sh, split_keys)
    ids = [c.id for c in CASES]
    assert any(i.startswith("tools/gpu/offline_run.sh") for i in ids), ids
    assert any(i.startswith("tools/asr_recipe.sh") for i in ids), ids


@pytest.mark.parametrize("code", CASES)
def test_inline_python_compiles(code):
    compile(code, "<inline>", "exec")
