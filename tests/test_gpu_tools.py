"""CPU tests of the helpers the GPU scripts rely on (tools/gpu): a wrong parse there would turn
a device run into a wrong number in docs/."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "gpu"))
import nonfinite_probe  # noqa: E402
import recipe_epoch_times  # noqa: E402

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
