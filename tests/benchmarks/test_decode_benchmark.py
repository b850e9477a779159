"""benchmarks/decode_gpu.py at toy sizes on the CPU: the JSON it writes, the forced number of
decoding steps, and the scores of all three decoders.  No timing is asserted (shared CPUs)."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import decode_gpu as bench  # noqa: E402


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("decode_bench")
    argv = ["--device", "cpu", "--tiny", "--out", str(out / "r.json"),
            "--plot", str(out / "r.png"), "--profile", str(out / "p.txt"),
            "--profile-decode", str(out / "d.txt")]
    returned = bench.main(argv)
    return returned, json.loads((out / "r.json").read_text()), out


def test_json_structure(tiny_run):
    returned, result, _ = tiny_run
    assert result == json.loads(json.dumps(returned))  # the file is what main returned
    assert result["benchmark"] == "decode_gpu" and result["finished"] is True
    assert "--tiny" in result["command"]
    env = result["environment"]
    for key in ("torch", "espnet", "espnet_mamba", "device_name", "kernels_available"):
        assert key in env
    s = result["settings"]
    assert s["device"] == "cpu" and s["amp"] == "none" and s["tiny"] is True
    assert s["frames"] == round(s["seconds"] * 25)
    assert s["ctc_window_margin"] == 100 and s["ctc_windowed"] is True
    assert s["weights"] == {"decoder": 0.7, "ctc": 0.3, "length_bonus": 0.0}
    assert set(result["decoders"]) == set(bench.DECODERS)
    assert result["errors"] == []
    assert set(result["profile"]) == set(bench.DECODERS)
    assert all("cpu_ms_per_step" in p for p in result["profile"].values())
    for name, regions in result["profile_decode"].items():  # named regions, ms per step
        assert regions["BatchBeamSearch.batch_beam"] > 0, name
        assert any(k.endswith(".batch_score") and v > 0 for k, v in regions.items()), name
        assert regions["CTCPrefixScorer.batch_score_partial"] > 0, name
    for info in result["decoders"].values():
        assert info["params"] > 0 and info["config"]["num_blocks"] >= 1
        assert info["config"]["vocab_size"] == s["vocab"]


def test_step_scores(tiny_run):
    _, result, _ = tiny_run
    s = result["settings"]
    assert set(result["step"]) == set(bench.DECODERS)
    for name, res in result["step"].items():
        assert list(res["by_prefix"]) == [str(p) for p in s["prefix_lengths"]], name
        assert len(res["init_state_ms"]) >= 3
        for p, r in res["by_prefix"].items():
            assert r["scores_shape"] == [s["beam"], s["vocab"]], (name, p)
            assert r["scores_finite"] is True, (name, p)
            assert len(r["ms"]) == len(r["wall_ms"]) == s["repeats"]
            assert all(t > 0 for t in r["ms"])
            assert r["median_ms"] == pytest.approx(sorted(r["ms"])[len(r["ms"]) // 2])
    ratios = result["step_ratios"]
    assert set(ratios["flatness"]) == set(bench.DECODERS)
    assert set(ratios["transformer_over"]) == set(bench.OURS)
    for name in bench.OURS:
        assert set(ratios["transformer_over"][name]) == {str(p) for p in s["prefix_lengths"]}
        checks = ratios["targets"]["results"][name]
        assert {"flatness", "flat_ok", "speedup_min_over_prefixes", "speedup_ok"} <= set(checks)
        assert all(math.isfinite(v) for v in ratios["transformer_over"][name].values())


def test_decode_forced_steps(tiny_run):
    _, result, _ = tiny_run
    s = result["settings"]
    n, beam = s["decode_steps"], s["beam"]
    assert set(result["decode"]) == set(bench.DECODERS)
    for name, res in result["decode"].items():
        assert res["steps_run"] == res["steps_requested"] == n, name
        assert res["hyps_per_step"] == [1] + [beam] * (n - 1), name
        assert res["best_tokens"] == n and res["n_best"] == beam, name
        assert res["steps_ok"] is True and res["full_beam"] is True, name
        assert len(res["seconds"]) == s["decode_repeats"]
        assert res["rtf"] == pytest.approx(res["median_s"] / s["seconds"])
        assert set(res["best_scores"]) == {"decoder", "ctc"}
        assert all(math.isfinite(v) for v in res["best_scores"].values())
    assert set(result["decode_ratios"]["transformer_rtf_over"]) == set(bench.OURS)
    assert set(result["decode_ratios"]["transformer_over_per_round_median"]) == set(bench.OURS)


def test_plot_written(tiny_run):
    pytest.importorskip("matplotlib")
    _, _, out = tiny_run
    png = out / "r.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_matching_blocks_is_closest(one_thread):
    args = bench.parse_args(["--device", "cpu", "--tiny"])
    cfg = bench.settings_from_args(args)
    target = bench.n_params(bench._build("transformer", cfg, 4, None))
    for name in bench.OURS:
        n = bench.matching_blocks(name, cfg, target, None)
        miss = {k: abs(bench.n_params(bench._build(name, cfg, k, None)) - target)
                for k in (n - 1, n, n + 1) if k >= 1}
        assert miss[n] == min(miss.values()), (name, miss)


def test_decode_bf16_other_length(one_thread):
    """bf16 autocast (the GPU default) and another forced length, one decoder of ours."""
    args = bench.parse_args(["--device", "cpu", "--tiny", "--decode-steps", "3",
                             "--ctc-window-margin", "0"])
    cfg = bench.settings_from_args(args)
    decoders = bench.build_decoders(cfg, ["speech_mamba"], torch.device("cpu"), None, 0)
    res = bench.bench_decode(decoders, cfg, torch.device("cpu"), "bf16", 0)["speech_mamba"]
    assert res["steps_run"] == 3 and res["hyps_per_step"] == [1, cfg["beam"], cfg["beam"]]
    assert res["steps_ok"] is True
    dec = decoders["speech_mamba"][0]
    assert "batch_score" not in vars(dec)  # the step counter is removed again


def test_failing_decoder_is_recorded(one_thread):
    """One decoder that raises does not stop the others; its error lands in the results."""
    args = bench.parse_args(["--device", "cpu", "--tiny", "--decode-steps", "2"])
    cfg = bench.settings_from_args(args)
    cpu = torch.device("cpu")
    decoders = bench.build_decoders(cfg, ["samba_asr", "speech_mamba"], cpu, None, 0)

    def broken(*_, **__):
        raise RuntimeError("kernel says no")

    decoders["speech_mamba"][0].batch_score = broken
    step = bench.bench_step(decoders, cfg, cpu, "none", 0)
    assert "kernel says no" in step["speech_mamba"]["error"]
    assert "error" not in step["samba_asr"]
    ratios = bench.step_ratios(step, cfg["prefix_lengths"])
    assert set(ratios["flatness"]) == {"samba_asr"}
    dec = bench.bench_decode(decoders, cfg, cpu, "none", 0)
    assert "kernel says no" in dec["speech_mamba"]["error"]
    assert dec["samba_asr"]["steps_ok"] is True
    assert bench.decode_ratios(dec) == {}


def test_eager_variants_are_ours_without_graphs(one_thread):
    """samba_asr_eager / speech_mamba_eager are built like ours, with the same weights and
    the execution option ``cuda_graphs: false``; off CUDA both run the eager step, so the decode is the same."""
    args = bench.parse_args(["--device", "cpu", "--tiny", "--decode-steps", "3"])
    cfg = bench.settings_from_args(args)
    cpu = torch.device("cpu")
    names = ["samba_asr", "samba_asr_eager", "speech_mamba", "speech_mamba_eager"]
    decoders = bench.build_decoders(cfg, names, cpu, None, 0)
    res = bench.bench_decode(decoders, cfg, cpu, "none", 0)
    for name in ("samba_asr", "speech_mamba"):
        ours, eager = decoders[name][0], decoders[f"{name}_eager"][0]
        assert ours.execution.cuda_graphs and not eager.execution.cuda_graphs
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(),
                                                     eager.state_dict().values()))
        assert decoders[f"{name}_eager"][1]["config"] == decoders[name][1]["config"]
        assert res[f"{name}_eager"]["best_score"] == res[name]["best_score"]
        assert ours.step_graphs.graphs == {}  # nothing captured off CUDA


def test_graph_checks_are_json_ready():
    """On CUDA the decoders' graph checks fill a deque; the JSON must still be written (json
    cannot write a deque: a run would lose its summary and plot)."""
    from espnet_mamba.graphs.decoding import StepGraphs

    class Dec:
        def __init__(self):
            self.step_graphs = StepGraphs()

    used, unused, off = Dec(), Dec(), Dec()
    used.step_graphs.checks.extend([(10, 1e-6, 2e-6), (4, 0.0, 0.0)])
    off.step_graphs.disabled = "first replay differs"
    got = bench.graph_checks({"used": (used, {}), "unused": (unused, {}), "off": (off, {})})
    assert json.loads(json.dumps(got)) == {
        "used": {"checks": [[10, 1e-6, 2e-6], [4, 0.0, 0.0]], "disabled": None},
        "off": {"checks": [], "disabled": "first replay differs"}}
