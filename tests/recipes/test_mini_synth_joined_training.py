"""egs2/mini_synth/asr1 with --train_joined_seconds at smoke size, stages 1-3: the corpus stage
also makes the training set plus its utterances joined per voice (tools/join_utterances.py),
the later stages train on it (token list, feature statistics) and the experiment is named for
it; a later stage without the joined set says how to make it."""

from __future__ import annotations

import pytest
from mini_synth_smoke import RECIPE, copy_recipe, missing_tools, run_recipe, tail

pytestmark = pytest.mark.slow


def keys(path):
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def test_joined_training_set_feeds_the_later_stages(tmp_path):
    assert not missing_tools(), missing_tools()
    work = copy_recipe(RECIPE, tmp_path, ("exp*", "dump*", "data*", "corpus*", "*.png"))
    log = tmp_path / "run.log"
    rc = run_recipe(work, ["--smoke", "true", "--stop_stage", "3",
                           "--train_joined_seconds", "8"], log)
    assert rc == 0, tail(log)
    raw = work / "dump_smoke" / "raw"
    train, joined = keys(raw / "train" / "wav.scp"), keys(raw / "train_joined8s" / "wav.scp")
    recordings = joined - train
    assert train < joined and recordings, sorted(joined)[:5]
    assert all("joined8s" in r for r in recordings)
    for name in ("text", "utt2spk", "utt2dur", "spk2utt"):
        assert (raw / "train_joined8s" / name).is_file(), name
    # stage 3 counted the joined set (the statistics' shape file lists every training item)
    shapes = work / "exp_smoke" / "asr_stats_raw_en_char" / "train" / "speech_shape"
    assert keys(shapes) == joined
    assert "exp_smoke/asr_train_asr_raw_en_char_joined8s" in log.read_text()
    # a training stage on a recipe where stage 1 ran without the option
    (raw / "train_joined8s" / "wav.scp").unlink()
    rc = run_recipe(work, ["--smoke", "true", "--stage", "4", "--train_joined_seconds", "8"],
                    log)
    assert rc != 0 and "run stage 1 with --train_joined_seconds 8" in log.read_text(), tail(log)
