"""CPU tests of the helpers the GPU scripts rely on (tools/gpu): a wrong parse there would turn
a device run into a wrong number in docs/."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "gpu"))
import nonfinite_probe  # noqa: E402
import recipe_epoch_times  # noqa: E402
import trace_gaps  # noqa: E402

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


class _Blowup(torch.nn.Module):
    def forward(self, x):
        return x * float("inf")


def test_nonfinite_probe_names_the_first_module(capsys):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), _Blowup(), torch.nn.Linear(4, 4)).train()
    nonfinite_probe.install(model, report_every=2)
    for _ in range(2):
        model(torch.ones(2, 4))
    err = capsys.readouterr().err
    first = [ln for ln in err.splitlines() if "first non-finite" in ln]
    assert len(first) == 2 and all("first non-finite output: 1 (_Blowup)" in ln for ln in first)
    assert "input finite True" in first[0]
    assert "largest outputs so far: 1 inf" in err or "largest outputs so far: 2 inf" in err


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


def test_trace_gaps_sums_idle_time_per_host_cause(tmp_path):
    """Two kernels with a 100 µs gap in which the host syncs, and one 5 µs gap (below the
    threshold); overlapping kernels merge into one busy span."""
    import gzip
    import json
    events = [{"ph": "X", "cat": "kernel", "name": "a", "ts": 0, "dur": 50,
               "args": {"correlation": 7}},
              {"ph": "X", "cat": "kernel", "name": "b", "ts": 40, "dur": 60,
               "args": {"correlation": 7}},
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": -5, "dur": 4,
               "args": {"correlation": 7}},
              {"ph": "X", "cat": "kernel", "name": "c", "ts": 200, "dur": 10},
              {"ph": "X", "cat": "kernel", "name": "d", "ts": 215, "dur": 10},
              {"ph": "X", "cat": "cpu_op", "name": "aten::item", "ts": 90, "dur": 150},
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 95,
               "dur": 100},
              {"ph": "i", "cat": "cpu_op", "name": "instant", "ts": 150}]
    path = tmp_path / "t.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    busy, found = trace_gaps.gaps(trace_gaps.load(str(path)), min_us=20)
    assert busy == 100 + 10 + 10
    assert found == [(100, "cudaStreamSynchronize")]
    text = trace_gaps.report(str(path), steps=1, min_us=20)
    assert "idle in gaps >= 20 us 0.10 ms (1 gaps)" in text and "cudaStreamSynchronize" in text
    assert "by launching call: cudaGraphLaunch 2, (unmatched) 2" in text
