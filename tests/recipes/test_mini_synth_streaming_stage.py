"""Stage 8 of egs2/mini_synth/asr1 (streaming decoding of a causal model) at smoke size.

Reuses the smoke run's corpus, token list and feature statistics (the ``smoke_run`` fixture of
test_mini_synth_smoke_run.py: CI's finished ``run.sh --smoke true`` or a fresh one), copied
into a private recipe directory, then ``run.sh --smoke true --stage 4 --stop_stage 8
--asr_config conf/tuning/train_asr_samba_causal.yaml --streaming true --nj 1`` over two of the test sets
(3 recordings, about 22 s): one training epoch of the causal Samba-ASR, offline decoding and
scoring, packing, then streaming decoding in 320 ms chunks.  The streamed final hypotheses must
be the offline ones, text for text, on both sets; RESULTS.md holds WER/CER of the finals and of the partial results (CTC prefix search over
each whole recording) and the real-time factor per set.  Stage 4 run again with one more epoch
goes on from the finished epoch (``--resume true``, as asr.sh), not from the start.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from mini_synth_smoke import copy_recipe, run_recipe, tail

pytestmark = pytest.mark.slow
CAUSAL = "conf/tuning/train_asr_samba_causal.yaml"
SETS = ["test_5s", "test_10s"]  # the smoke corpus's 5 s and 10 s recordings


def texts(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        utt, _, text = line.partition(" ")
        out[utt] = text.strip()
    return out


def test_streaming_stage_gives_the_offline_hypotheses(smoke_run, tmp_path):
    rc, recipe, log = smoke_run
    assert rc == 0, f"run.sh --smoke true failed (rc={rc}):\n{tail(log)}"
    # the corpus (wav.scp holds absolute paths), token lists and statistics of the smoke run
    work = copy_recipe(recipe, tmp_path, ("exp*", "corpus*", "*.png"))
    for stats in (recipe / "exp_smoke").glob("asr_stats_*"):
        shutil.copytree(stats, work / "exp_smoke" / stats.name)
    run_log = tmp_path / "run.log"
    rc = run_recipe(work, ["--smoke", "true", "--stage", "4", "--stop_stage", "8",
                           "--asr_config", CAUSAL, "--streaming", "true", "--nj", "1",
                           "--test_sets", " ".join(SETS)], run_log)
    assert rc == 0, f"stages 4-8 failed (rc={rc}):\n{tail(run_log)}"

    exp = work / "exp_smoke" / "asr_train_asr_samba_causal_raw_en_char"
    offline = next(exp.glob("decode_*"))
    streamed = next(exp.glob("streaming5120_*"))
    sets = SETS
    for dset in sets:
        want, got = texts(offline / dset / "text"), texts(streamed / dset / "text")
        assert got == want, dset
        partial = texts(streamed / "partial" / dset / "text")
        assert partial.keys() == want.keys(), dset
        rtf = texts(streamed / dset / "rtf")
        assert rtf.keys() == want.keys() and all(float(v) > 0 for v in rtf.values()), dset
        # one job a set (--nj 1), its recordings longest first: ESPnet reads them from a
        # wav.scp of the job's own, in the order of its key list
        logdir = streamed / dset / "logdir"
        keys = (logdir / "keys.1").read_text().split()
        assert sorted(keys) == sorted(want), dset
        assert [line.split()[0] for line in (logdir / "wav.1.scp").read_text().splitlines()] == keys

    results = (streamed / "RESULTS.md").read_text()
    final, partial = results.split("## Partial results", 1)
    for section in (final, partial):
        for metric in ("WER", "CER"):
            body = section.split(f"### {metric}", 1)[1].split("###", 1)[0]
            for dset in sets:
                assert re.search(rf"^\|[^|]*/{re.escape(dset)}\|\d+\|\d+\|", body, re.MULTILINE), (
                    f"no {metric} row for {dset}:\n{results}")
    for dset in sets:
        assert re.search(rf"^\|{re.escape(streamed.name)}/{re.escape(dset)}\|\d+\|[\d.]+\|"
                         rf"[\d.]+\|[\d.]+\|$", results, re.MULTILINE), results

    # stage 4 again with one more epoch: resumed from checkpoint.pth, epoch 2 only
    rc = run_recipe(work, ["--smoke", "true", "--stage", "4", "--stop_stage", "4",
                           "--asr_config", CAUSAL, "--max_epoch", "2"], run_log)
    assert rc == 0, f"stage 4 again failed (rc={rc}):\n{tail(run_log)}"
    log = (exp / "train.log").read_text()
    assert "The training was resumed" in log, tail(exp / "train.log")
    assert "2/2epoch started" in log and "1/2epoch started" not in log, tail(exp / "train.log")
