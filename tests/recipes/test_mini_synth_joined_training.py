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
    # stage 3 counted the joined set (the statistics' shape file lists every training item),
    # in statistics of its own: the plain training set's would be in asr_stats_raw_en_char
    shapes = work / "exp_smoke" / "asr_stats_raw_en_char_joined8s" / "train" / "speech_shape"
    assert keys(shapes) == joined
    assert not (work / "exp_smoke" / "asr_stats_raw_en_char").exists()
    assert "exp_smoke/asr_train_asr_raw_en_char_joined8s" in log.read_text()
    # a training stage on a recipe where stage 1 ran without the option
    (raw / "train_joined8s" / "wav.scp").unlink()
    rc = run_recipe(work, ["--smoke", "true", "--stage", "4", "--train_joined_seconds", "8"],
                    log)
    assert rc != 0 and "run stage 1 with --train_joined_seconds 8" in log.read_text(), tail(log)

    # --train_joined_share 0.5: half of each voice's utterances joined, the rest kept: every
    # training utterance's words once, in <train>_joined8s_share0.5
    rc = run_recipe(work, ["--smoke", "true", "--stop_stage", "1", "--train_joined_seconds", "8",
                           "--train_joined_share", "0.5"], log)
    assert rc == 0, tail(log)
    shared = raw / "train_joined8s_share0.5"
    kept = keys(shared / "wav.scp") & train
    assert 0 < len(kept) < len(train) and len(keys(shared / "wav.scp") - train) > 0

    def words(d):
        return sorted(w for line in (d / "text").read_text().splitlines() for w in line.split()[1:])
    assert words(shared) == words(raw / "train")
    for args, error in ((["--train_joined_share", "0.5"], "needs --train_joined_seconds"),
                        (["--train_joined_seconds", "8", "--train_joined_share", "2"],
                         "--train_joined_share must be a share in (0, 1] (got '2')")):
        rc = run_recipe(work, ["--smoke", "true", "--stop_stage", "1", *args], log)
        assert rc != 0 and error in log.read_text(), tail(log)
