"""CPU tests of the functions the GPU scripts share (tools/gpu): a wrong parse there would put a
wrong number into docs/performance.md."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "gpu"))
import recipe_epoch_times  # noqa: E402
import train_check  # noqa: E402

LOG = """\
[vm] 2026-11-22 06:48:11,270 (trainer:392) INFO: 1epoch results: [train] iter_time=0.018, loss=51.109, train_time=0.639, time=1 minute and 19.92 seconds, total_count=125, [valid] loss=42.861, time=1.79 seconds, total_count=10
[vm] 2026-11-22 06:49:27,651 (trainer:392) INFO: 2epoch results: [train] iter_time=0.012, loss=37.173, train_time=0.597, time=14.65 seconds, total_count=250, [valid] loss=35.762, time=1.66 seconds, total_count=20
"""


def test_epoch_times_reads_the_train_part_of_each_results_line():
    assert recipe_epoch_times.epoch_times(LOG) == {1: pytest.approx(79.92), 2: pytest.approx(14.65)}
    import humanfriendly  # what ESPnet formats the epoch time with

    for secs in (3.5, 79.92, 3723.5):
        text = humanfriendly.format_timespan(secs)
        line = (f"1epoch results: [train] train_time=0.6, time={text}, total_count=9, "
                "[valid] time=1.79 seconds, total_count=1")
        assert recipe_epoch_times.epoch_times(line) == {1: pytest.approx(secs)}, text
    with pytest.raises(ValueError, match="no duration"):
        recipe_epoch_times.seconds("soon")


def test_recipe_table_and_exit_status(tmp_path, capsys):
    log = tmp_path / "train.log"
    log.write_text(LOG)
    out = tmp_path / "t.json"
    assert recipe_epoch_times.main([str(out), f"a={log}"]) == 0
    assert '"median_after_first": 14.65' in out.read_text()
    assert recipe_epoch_times.main([str(out), f"a={log}", f"b={tmp_path / 'missing.log'}"]) == 1


def test_recipe_audio_survives_the_trip_to_the_gpu_machine(tmp_path):
    """tools/gpu/pack_recipe_audio.py: the lengths (what a seconds-per-epoch run depends on), the
    transcripts and the set files come back exactly; the audio through Opus, close."""
    import numpy as np
    import soundfile as sf

    import pack_recipe_audio as pra

    here, there = tmp_path / "here", tmp_path / "there"
    rng = np.random.default_rng(0)
    for dset, n in (("train", 3), ("dev", 1)):
        d = here / "dump" / "raw" / dset
        d.mkdir(parents=True)
        scp = []
        for i in range(n):
            t = np.arange(16000 + 777 * i) / 16000
            x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
            wav = here / f"{dset}{i}.wav"
            sf.write(wav, x, 16000, subtype="PCM_16")
            scp.append(f"{dset}-u{i} {wav}\n")
        (d / "wav.scp").write_text("".join(scp))
        for name in pra.META:
            (d / name).write_text(f"{name} of {dset}\n")
    archive = tmp_path / "a.tar"
    assert pra.pack(archive, here) == {"train": 3, "dev": 1}
    assert pra.unpack(archive, there) == {"train": 3, "dev": 1}
    for dset in ("train", "dev"):
        for name in pra.META:
            assert (there / "dump/raw" / dset / name).read_text() == f"{name} of {dset}\n"
        src = dict(pra.read_scp(here / "dump/raw" / dset / "wav.scp"))
        got = dict(pra.read_scp(there / "dump/raw" / dset / "wav.scp"))
        assert got.keys() == src.keys()
        for utt, path in got.items():
            assert Path(path).is_absolute() and Path(path).is_relative_to(there / "corpus/wav")
            a, sr_a = sf.read(src[utt])
            b, sr_b = sf.read(path)
            assert (len(a), sr_a) == (len(b), sr_b)
            assert np.corrcoef(a, b)[0, 1] > 0.9  # the same signal, lossy
    # the originals are never overwritten by their lossy copies
    before = (here / "dump/raw/train/wav.scp").read_text()
    assert pra.unpack(archive, here) == {"train": 3, "dev": 1}
    assert (here / "dump/raw/train/wav.scp").read_text() == before


def test_recipe_audio_unpack_names_a_missing_archive(tmp_path):
    import pack_recipe_audio as pra

    with pytest.raises(SystemExit, match="make it with 'pack'"):
        pra.main(["unpack", str(tmp_path / "none.tar")])


def test_train_check_passes_only_a_clean_falling_run():
    good = {"train_rc": 0, "decode_rc": 0, "epoch_losses": {1: 8.9, 2: 3.0, 3: 0.13},
            "nan_in_log": False}
    assert train_check.passed(good)
    for bad in ({"train_rc": 1}, {"decode_rc": 2}, {"nan_in_log": True},
                {"epoch_losses": {1: 8.9, 2: float("nan")}},
                {"epoch_losses": {1: 3.0, 2: 3.5}}, {"epoch_losses": {}}):
        assert not train_check.passed({**good, **bad}), bad
    del good["decode_rc"]  # training failed before decoding
    assert not train_check.passed(good)


def test_repeat_captures_counts_failures_and_their_errors():
    import repeat_captures

    runs = [{"exit_status": 0, "captures": 1, "capture_error": None},
            {"exit_status": 0, "captures": 0,
             "capture_error": "operation failed due to a previous error during capture\nTraceback"},
            {"exit_status": 0, "captures": 0,
             "capture_error": "operation failed due to a previous error during capture\nother"},
            {"exit_status": 1, "stderr_tail": "RuntimeError: no CUDA"}]
    s = repeat_captures.summarise(runs)
    assert s["processes"] == 4 and s["failed"] == 3
    assert s["errors"] == [
        {"first_line": "operation failed due to a previous error during capture", "count": 2},
        {"first_line": "RuntimeError: no CUDA", "count": 1}]


def test_repeat_captures_reports_a_process_that_cannot_run(tmp_path):
    """Without CUDA every child fails: the parent says so per process and exits 1."""
    import json

    import repeat_captures

    out = tmp_path / "c.json"
    assert repeat_captures.main(["--processes", "1", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["failed"] == 1 and result["runs"][0]["exit_status"] != 0
    assert "CUDA" in result["runs"][0]["stderr_tail"] or "cuda" in result["runs"][0]["stderr_tail"]


def test_gpu_tests_captures_part_fails_when_a_capture_cannot_run(tmp_path):
    """tools/gpu/gpu_tests.sh PARTS=captures runs repeat_captures.py; without CUDA its process
    fails, and the part (and the script's exit status) says so."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PARTS="captures", CAPTURE_PROCESSES="1", OUT=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(root / "tools" / "gpu" / "gpu_tests.sh")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert (tmp_path / "captures.json").is_file()
    assert "FAILED: captures" in proc.stdout


def test_repeat_captures_counts_a_hung_process_as_failed(tmp_path):
    """A process over --timeout is stopped and reported (status 124), not the end of the run."""
    import json

    import repeat_captures

    out = tmp_path / "c.json"
    assert repeat_captures.main(["--processes", "1", "--timeout", "0.2", "--out", str(out)]) == 1
    run = json.loads(out.read_text())["runs"][0]
    assert run["exit_status"] == 124 and "timed out after 0.2 s" in run["stderr_tail"]
