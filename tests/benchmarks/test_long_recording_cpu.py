"""benchmarks/long_recording_cpu.py on a 2-minute recording, in a fresh process, as CI's stand-in
for the 20-minute benchmark (docs/reliability.md, "Long recordings")."""

import json
import os
import subprocess
import sys
from pathlib import Path

from espnet_mamba.integration import names

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "long_recording_cpu.py"
ENV = {k: v for k, v in os.environ.items() if k != names.DISABLE_ENV}


def test_two_minute_recording_decodes_on_cpu_within_memory():
    """benchmarks/long_recording_cpu.py in a fresh process (VmHWM: the peak of that process alone):
    2 minutes of 16 kHz audio, tiny samba_asr model, beam 2, CTC weight 0.3."""
    out = subprocess.run(
        [sys.executable, str(BENCH), "--minutes", "2", "--tiny", "--json", "--beam", "2",
         "--maxlenratio", "0.005"], capture_output=True, text=True, timeout=300,
        env=dict(ENV, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["feature_frames"] == 12001 and row["encoder_frames"] == 2999
    assert row["hyp_tokens"] > 0  # a hypothesis (bounded by maxlenratio: 14 tokens)
    # measured ~0.9 GiB peak on a 2-core CPU; the decode itself adds < 0.2 GiB
    assert row["peak_rss_mib"] < 3072, row
    assert row["peak_rss_mib"] - row["rss_before_decode_mib"] < 1024, row
