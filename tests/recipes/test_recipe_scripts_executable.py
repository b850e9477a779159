"""The recipes' entry scripts are run as ``./run.sh`` (the READMEs, ESPnet's habit): each must be
executable in the checkout, as git stores it."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENTRY = sorted(REPO.glob("egs2/*/asr1/run*.sh"))


def test_recipes_have_entry_scripts():
    assert {p.parent.parent.name for p in ENTRY} >= {"mini_synth", "synth_speech", "librispeech"}


@pytest.mark.parametrize("script", ENTRY, ids=[str(p.relative_to(REPO)) for p in ENTRY])
def test_entry_script_is_executable(script):
    assert os.access(script, os.X_OK), f"{script.relative_to(REPO)}: chmod +x, and git add it"
