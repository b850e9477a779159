"""The CTC prefix benchmarks run end to end on small sizes: both scorers timed on the same
states with the same scores, and a whole Speech2Text decode with each scorer giving the same
hypothesis."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ctc_prefix_cpu
import ctc_prefix_decode


def test_step_benchmark(tmp_path):
    out = tmp_path / "steps.json"
    result = ctc_prefix_cpu.main(["--frames", "90", "--vocab", "60", "--points", "2",
                                  "--repeats", "1", "--margins", "0", "5", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == result["results"]
    rows = result["results"]
    assert [(r["scoring"], r["margin"]) for r in rows] == [
        ("partial (15)", 0), ("partial (15)", 5), ("full", 0), ("full", 5)]
    for row in rows:
        assert row["espnet_ms"] > 0 and row["vectorized_ms"] > 0
        assert row["max_abs_score_diff"] < 1e-3  # float32 scores of magnitude ~1e2


def test_decode_benchmark(tmp_path):
    out = tmp_path / "decode.json"
    result = ctc_prefix_decode.main(["--tiny", "--seconds", "3", "--vocab", "40",
                                     "--beam", "3", "--margins", "100", "--out", str(out)])
    (row,) = result["results"]
    assert row["same_hypothesis"] and row["espnet"]["tokens"] == row["auto"]["tokens"] > 0
    assert row["espnet"]["scorer"] == "CTCPrefixScoreTH"
    assert row["auto"]["scorer"] == "VectorizedCTCPrefixScoreTH"
    assert json.loads(out.read_text())["results"] == result["results"]
