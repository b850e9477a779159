"""The training configs of the synthetic-speech recipes (egs2/mini_synth/asr1 and
egs2/synth_speech/asr1): each parses with ESPnet's asr_train parser (unknown keys are errors)
and builds with ``ASRTask.build_model``, and its parameter count is the one its recipe README's
"Configs" table gives (within 0.01 M: the table's two decimals, counted with the recipe's own
token list; here a 32-symbol char list for mini_synth and a 31-symbol one for synth_speech, the
sizes of the lists their stage 2 makes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

EGS2 = Path(__file__).resolve().parents[2] / "egs2"
VOCAB = {"mini_synth": 32, "synth_speech": 31}
CONFIGS = [pytest.param(r, p, id=f"{r}-{p.stem}") for r in VOCAB
           for p in sorted((EGS2 / r / "asr1" / "conf" / "tuning").glob("train_asr_*.yaml"))]


def stated_count(recipe: str, config: Path) -> float:
    """Millions of parameters in the README row that names the config."""
    readme = (EGS2 / recipe / "asr1" / "README.md").read_text()
    row = next((line for line in readme.splitlines()
                if line.startswith(f"| `{config.name}`")), None)
    assert row, f"{recipe}/asr1/README.md has no Configs row for {config.name}"
    m = re.search(r"\| ([\d.]+) M[ |(]", row)
    assert m, f"no parameter count in {recipe}'s row: {row}"
    return float(m.group(1))


@pytest.mark.parametrize("recipe,config", CONFIGS)
def test_config_builds_with_the_stated_size(recipe, config, tmp_path):
    from espnet2.tasks.asr import ASRTask

    tokens = ["<blank>", "<unk>", *(f"t{i}" for i in range(VOCAB[recipe] - 3)), "<sos/eos>"]
    (tmp_path / "tokens.txt").write_text("\n".join(tokens) + "\n")
    args = ASRTask.get_parser().parse_args(
        ["--config", str(config), "--token_list", str(tmp_path / "tokens.txt"),
         "--normalize", "none"])
    model = ASRTask.build_model(args)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - stated_count(recipe, config)) <= 0.01, (config, n)
