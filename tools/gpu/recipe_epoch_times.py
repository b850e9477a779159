"""Seconds per training epoch from ESPnet train.log files (the ``Nepoch results: ... time=...``
line of each epoch), as a table and JSON: ``recipe_epoch_times.py OUT.json NAME=LOG ...``.

Used by tools/gpu/mini_synth_epochs.sh for the mini recipe's ``asr_train --ngpu 1`` runs.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

# the train part's ``time=`` (not ``train_time=``); humanfriendly's durations contain commas
# ("1 hour, 2 minutes and 3.5 seconds"), so match up to the field that follows it
_RESULT = re.compile(r"(\d+)epoch results: \[train\].*?\btime=(.*?), total_count=")


def seconds(text: str) -> float:
    """ESPnet's (humanfriendly's) duration: '12.3 seconds', '1 minute and 19.92 seconds'."""
    units = {"hour": 3600.0, "minute": 60.0, "second": 1.0}
    found = re.findall(r"([\d.]+) (hour|minute|second)s?", text)
    if not found:
        raise ValueError(f"no duration in {text!r}")
    return sum(float(n) * units[u] for n, u in found)


def epoch_times(log_text: str) -> dict:
    return {int(e): seconds(t) for e, t in _RESULT.findall(log_text)}


def main(argv):
    out, runs = Path(argv[0]), dict(a.split("=", 1) for a in argv[1:])
    report = {}
    for name, log in runs.items():
        times = epoch_times(Path(log).read_text(errors="replace")) if Path(log).exists() else {}
        later = [t for e, t in sorted(times.items()) if e > 1] or list(times.values())
        report[name] = {"epochs": len(times), "seconds_per_epoch": times,
                        "median_after_first": statistics.median(later) if later else None}
    out.write_text(json.dumps(report, indent=1))
    print(f"{'config':32s} {'epochs':>6s} {'1st epoch s':>11s} {'median later s':>14s}")
    for name, r in report.items():
        first = r["seconds_per_epoch"].get(1)
        med = r["median_after_first"]
        print(f"{name:32s} {r['epochs']:6d} {first if first is not None else '-':>11} "
              f"{med if med is not None else '-':>14}")
    return 0 if all(r["epochs"] for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
