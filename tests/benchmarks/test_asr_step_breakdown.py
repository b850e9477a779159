"""benchmarks/asr_step_breakdown.py with --tiny on the CPU: every model is built by ESPnet's
ASRTask and trained on the batch that batch_bins holds; the parts' host times add up within the
step, and the table's ratios come from the side-by-side runs.  No timing is asserted."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import asr_step_breakdown as breakdown  # noqa: E402
import asr_train_throughput as train_bench  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory, espnet_root):
    out = tmp_path_factory.mktemp("breakdown") / "b.json"
    returned = breakdown.main(["--tiny", "--device", "cpu", "--models", "samba_asr", "speech_mamba",
                               "--seconds", "1.5", "--warmup", "1", "--steps", "2",
                               "--baseline-config", str(espnet_root / train_bench.BASELINE_REL),
                               "--out", str(out)])
    return returned, json.loads(out.read_text())


def test_every_model_trains_on_the_numel_batch(run):
    returned, result = run
    assert result == json.loads(json.dumps(returned))
    # the baseline is added: the ratios need it
    assert list(result["runs"]) == ["conformer@1.5", "samba_asr@1.5", "speech_mamba@1.5"]
    rows = 64000 // int(1.5 * 16000)
    for key, r in result["runs"].items():
        assert "error" not in r, (key, r)
        assert r["rows"] == rows and r["params_m"] > 0
        parts = sum(r[f"{p}_host_ms"] for p in breakdown.PARTS)
        assert 0 < parts <= r["forward_host_ms"] + 1e-6
        assert r["forward_host_ms"] + r["backward_host_ms"] <= r["step_ms"] * 1.5
        assert r["kernel_ms"] is None and r["gpu_busy"] is None  # no GPU profile on a CPU


def test_table_ratios_are_the_baselines_step_over_the_models(run):
    _, result = run
    table = breakdown.report(result)
    base = result["runs"]["conformer@1.5"]["step_ms"]
    for key, r in result["runs"].items():
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {key.split('@')[0]} |"))
        assert f"{base / r['step_ms']:.2f}x" in line


def test_the_batch_is_what_batch_bins_holds():
    speech, lengths, text, text_lengths = breakdown.batch(10.0, 16000000, 5000, "cpu")
    assert speech.shape == (100, 160000) and int(lengths.max()) == 160000
    assert int(lengths.min()) == 144000 and (lengths[:-1] >= lengths[1:]).all()
    assert text.shape == (100, 39) and int(text.min()) >= 2 and int(text.max()) < 4999
    assert (text_lengths == 39).all()


def test_gpu_totals_sum_the_gpu_work_not_the_parts_spans():
    """What the profiler gives on a GPU, faked: kernels and copies are summed; the ranges' GPU
    spans (which cover those kernels: ours, the optimizer's) are not added, ours reported
    apart."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def ev(name, device, us):
        return SimpleNamespace(name=name, device_type=device,
                               is_user_annotation=name.startswith(("part:", "Optimizer.")),
                               time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [ev("part:encoder", DeviceType.CUDA, 900.0), ev("sm90_gemm", DeviceType.CUDA, 500.0),
              ev("selective_scan_fwd", DeviceType.CUDA, 300.0),
              ev("Memcpy DtoD", DeviceType.CUDA, 50.0), ev("part:decoder", DeviceType.CUDA, 40.0),
              ev("Optimizer.step#Adam.step", DeviceType.CUDA, 700.0),
              ev("cudaLaunchKernel", DeviceType.CPU, 5.0), ev("cudaLaunchKernel", DeviceType.CPU, 5.0),
              ev("cuLaunchKernelEx", DeviceType.CPU, 5.0), ev("cudaGraphLaunch", DeviceType.CPU, 9.0),
              ev("aten::mm", DeviceType.CPU, 20.0)]
    t = breakdown.gpu_totals(events)
    assert t["kernel_ms"] == pytest.approx(0.85)
    assert t["kernel_launches"] == 3 and t["graph_launches"] == 1
    assert t["part_gpu_span_ms"] == {"encoder": pytest.approx(0.9), "decoder": pytest.approx(0.04)}
    assert [n for n, _ in t["top_kernels_ms"]] == ["sm90_gemm", "selective_scan_fwd", "Memcpy DtoD"]


def test_benchmarks_sh_step_runs_it_with_the_baseline_config(tmp_path, espnet_root):
    """tools/gpu/benchmarks.sh espnet_step_breakdown (--tiny on a CPU), ESPnet's Conformer config
    from BASELINE_CONFIG: the JSON names every model of the step."""
    import os
    import shutil
    import subprocess

    config = tmp_path / "conformer.yaml"
    shutil.copy(espnet_root / train_bench.BASELINE_REL, config)
    out = tmp_path / "out"
    env = dict(os.environ, EXTRA_ARGS="--tiny", OUT=str(out), BASELINE_CONFIG=str(config),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu" / "benchmarks.sh"),
                           "espnet_step_breakdown"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "espnet_step_breakdown.json").read_text())
    assert [k.split("@")[0] for k in result["runs"]] == [
        "conformer", "samba_asr", "samba_asr_eager", "samba_asr_mamba2_graphed", "speech_mamba",
        "speech_mamba_eager"]
    assert all("error" not in r for r in result["runs"].values())
    assert "--baseline-config" in result["command"]


def test_a_length_that_holds_no_batch_is_refused(capsys):
    with pytest.raises(SystemExit):
        breakdown.main(["--seconds", "0", "--out", "unused.json"])
    assert "--seconds must be positive, got [0.0]" in capsys.readouterr().err
