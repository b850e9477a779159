"""The encoder benchmarks on the CPU: encoder_report.py's target rows on a hand-made result
file, encoder_interleaved.py and the graphed variant at toy sizes.  Nothing is timed."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import encoder_report  # noqa: E402


def result(model, mode, batch, seconds, ms=None, gib=None, error=None):
    r = {"model": model, "mode": mode, "batch": batch, "seconds": seconds}
    if error:
        r["error"] = error
    else:
        r.update(median_ms=ms, peak_gib=gib)
    return r


def test_linear_target_pass_fail_and_not_run():
    results = [result("conformer_sdpa", "infer", 1, s, 10.0 * s, 1.0) for s in (60, 300)]
    # linear to 1200 s; one that stops at 300 s (a variant run short); one out of memory at 1200
    results += [result("samba_asr", "infer", 1, s, 2.0 * s, 0.5) for s in (60, 300, 1200)]
    results += [result("short", "infer", 1, s, 2.0 * s, 0.5) for s in (60, 300)]
    results += [result("oom", "infer", 1, s, 2.0 * s, 0.5) for s in (60, 300)]
    results.append(result("oom", "infer", 1, 1200, error="OOM"))
    results += [result("budget", "infer", 1, s, 2.0 * s, 0.5) for s in (60, 300)]
    results.append(result("budget", "infer", 1, 1200,
                          error="skipped (time budget of the model)"))
    models = ("conformer_sdpa", "samba_asr", "short", "oom", "budget")
    report = {"models": {m: {} for m in models},
              "results": results}
    lines = encoder_report.targets(report, encoder_report.index(report))
    row = next(line for line in lines if line.startswith("| infer B1 up to 1200 s"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells[0].startswith("PASS exponent 1.000 over 60-1200 s")
    assert cells[1].startswith("not run to 1200 s (exponent 1.000 over 60-300 s")
    assert cells[2].startswith("FAIL at 1200 s (OOM)")
    assert cells[3].startswith("not run to 1200 s")
    train = next(line for line in lines if line.startswith("| train B8 15 s"))
    assert train.count("not measured") == 4


def test_interleaved_benchmark_on_cpu(tmp_path, monkeypatch, capsys):
    """benchmarks/encoder_interleaved.py at toy sizes: every model gets its timed runs in
    each setting; one that runs out of memory is recorded so and not tried at longer lengths,
    the others go on; the report says how the timing was done."""
    import encoder_gpu
    import encoder_interleaved

    real_step = encoder_gpu.step_fn

    calls = {}

    def step_fn(enc, x, ilens, mode, device, amp):
        """samba_asr: out of memory from 2 s on, in its warm-up; the conformer at 3 s, in
        its second timed run (after 1 warm-up + 1 timed)."""
        name, frames = type(enc).__name__, x.shape[1]
        run = real_step(enc, x, ilens, mode, device, amp)

        def fn():
            n = calls[name, frames] = calls.get((name, frames), 0) + 1
            if (name == "SambaASREncoder" and frames > 150) or (
                    name == "ConformerEncoder" and frames > 250 and n > 2):
                raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
            run()
        return fn

    monkeypatch.setattr(encoder_gpu, "step_fn", step_fn)
    out = tmp_path / "il.json"
    report = encoder_interleaved.main(
        ["--device", "cpu", "--tiny", "--out", str(out), "--models", "conformer_sdpa",
         "samba_asr", "--lengths", "1", "2", "3", "--batches", "1", "--modes", "train",
         "--repeats", "2", "--warmup", "1"])
    got = {(r["model"], r["seconds"]): r for r in report["results"]}
    assert len(got["conformer_sdpa", 2]["times_ms"]) == 2
    assert got["conformer_sdpa", 3]["error"] == "OOM" and "median_ms" not in got[
        "conformer_sdpa", 3]
    assert got["samba_asr", 1]["median_ms"] > 0
    assert got["samba_asr", 2]["error"] == "OOM" and ("samba_asr", 3) not in got
    assert report["settings"]["interleaved"] is True
    assert out.exists()
    capsys.readouterr()
    encoder_report.main([str(out)])
    assert "the models in turn within each setting" in capsys.readouterr().out


def test_graphed_variant_is_the_shipped_option_and_plain_off_cuda():
    """encoder_gpu.py's *_graphed variants are the encoders with ``cuda_graphs: true``: off
    CUDA they run the plain layers (same outputs and gradients, nothing captured; the captures:
    tests/gpu/test_graphed_encoder_cuda.py), and a benchmark row says no graph ran."""
    import torch

    import encoder_gpu

    torch.manual_seed(0)
    plain, _ = encoder_gpu.build("samba_asr", tiny=True, dropout_rate=0.0)
    torch.manual_seed(0)
    graphed, conf = encoder_gpu.build("samba_asr_graphed", tiny=True, dropout_rate=0.0)
    assert conf["execution"] == {"cuda_graphs": True} and encoder_gpu.is_graphed(graphed)
    assert not encoder_gpu.is_graphed(plain)
    x, ilens = torch.randn(2, 50, encoder_gpu.FEATS), torch.tensor([50, 31])
    outs = []
    for enc in (plain, graphed):
        enc.train()
        y, olens, _ = enc(x, ilens)
        y.square().mean().backward()
        outs.append((y.detach(), olens, [p.grad.clone() for p in enc.parameters()]))
    (y1, l1, g1), (y2, l2, g2) = outs
    assert torch.equal(y1, y2) and torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    assert graphed.training_graphs.graphs == {} and graphed.training_graphs.captures == 0
    res = {}
    encoder_gpu.record_graphs(graphed, res)
    assert res == {"graph_captures": 0}  # a benchmark row says the graphs did not run


@pytest.mark.parametrize("script", ["encoder_gpu", "encoder_interleaved"])
def test_unknown_model_is_named(script, tmp_path, capsys):
    module = __import__(script)
    with pytest.raises(SystemExit):
        module.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "x.json"),
                     "--models", "samba_asr", "samba_asr_wdie"])
    err = capsys.readouterr().err
    assert "unknown model(s) samba_asr_wdie; valid:" in err and "samba_asr_wide" in err
    assert not (tmp_path / "x.json").exists()


def test_report_of_a_training_only_run_has_no_inference_part(tmp_path):
    """--modes train: no empty inference tables, no empty inference plots."""
    pytest.importorskip("matplotlib")
    results = [result(m, "train", b, s, 10.0 * s, 1.0)
               for m in ("conformer_sdpa", "samba_asr") for b in (8, 1) for s in (15, 30)]
    report = {"models": {"conformer_sdpa": {}, "samba_asr": {}}, "results": results,
              "environment": {"device": "cpu", "date": "2026-11-22"}}
    idx = encoder_report.index(report)
    text = "\n".join(encoder_report.tables(report, idx))
    assert "**train, batch 8**" in text and "**train, batch 1**" in text
    assert "infer" not in text
    encoder_report.plots(report, idx, str(tmp_path / "p"))
    assert (tmp_path / "p_time.png").stat().st_size > 0


def test_every_benchmark_model_builds_and_runs_tiny():
    """Each name encoder_gpu.py accepts builds at toy size and runs one training step on the
    CPU with finite outputs (a typo in the model table would otherwise surface on the GPU)."""
    import torch

    import encoder_gpu

    assert set(encoder_gpu.DEFAULT_MODELS) <= set(encoder_gpu.model_table())
    x, ilens = torch.randn(2, 40, encoder_gpu.FEATS), torch.tensor([40, 25])
    for name in encoder_gpu.model_table():
        enc, conf = encoder_gpu.build(name, tiny=True)
        y = enc.train()(x, ilens)[0]
        y.square().mean().backward()
        assert y.isfinite().all(), name
        options = conf.get("execution", {})
        assert options.get("cuda_graphs", False) == name.endswith("_graphed"), name
        if name.startswith(("samba_asr", "speech_mamba")):  # the variant's options are set
            assert all(getattr(enc.execution, k) == v for k, v in options.items()), name


def test_recompute_flag_reaches_our_encoders_only(tmp_path):
    """--recompute-input-layer sets our encoders' option (recorded in the report's conf) and
    leaves ESPnet's encoders, which have no such option, as they are."""
    import encoder_gpu

    from espnet_mamba.encoders.input_layer import RecomputedConvs

    report = encoder_gpu.main(
        ["--device", "cpu", "--tiny", "--out", str(tmp_path / "r.json"), "--models",
         "conformer_sdpa", "speech_mamba", "--lengths", "1", "--batches", "1", "--modes",
         "train", "--repeats", "1", "--warmup", "1", "--recompute-input-layer"])
    assert report["models"]["speech_mamba"]["conf"]["recompute_input_layer"] is True
    assert "recompute_input_layer" not in report["models"]["conformer_sdpa"]["conf"]
    assert all("median_ms" in r for r in report["results"])
    enc, _ = encoder_gpu.build("samba_asr", True, recompute_input_layer=True)
    assert isinstance(enc.embed.embed.conv, RecomputedConvs)


def test_report_of_one_process_per_model(tmp_path, capsys):
    """encoder_report.py merges several JSONs (tools/gpu/benchmarks.sh step `b1_300`: one
    process per model) into one table, the ratios taken across them."""
    env = {"device": "cuda", "date": "2026-11-22", "torch": "2.11", "command": "run"}
    files = []
    for i, (model, ms, gib) in enumerate((("conformer_sdpa", 400.0, 20.0),
                                          ("samba_asr", 50.0, 4.0))):
        f = tmp_path / f"{i}.json"
        f.write_text(json.dumps({"environment": dict(env, command=f"run {model}"),
                                 "models": {model: {"params": 8e7}},
                                 "results": [result(model, "train", 1, 300, ms, gib)]}))
        files.append(str(f))
    encoder_report.main(files)
    out = capsys.readouterr().out
    assert "run conformer_sdpa ; run samba_asr" in out
    assert "| train B1 300 s: >= 4x, memory <= 0.25x | PASS 8.00x, memory 0.200x |" in out


def test_report_shows_a_recomputed_run_beside_the_plain_one(tmp_path, capsys):
    """The same model run with and without --recompute-input-layer: two columns, the
    recomputed one named NAME+recompute, each with its own ratios."""
    env = {"device": "cuda", "date": "2026-11-23", "torch": "2.11", "command": "run"}
    files = []
    for i, (model, conf, ms, gib) in enumerate((
            ("conformer_sdpa", {}, 400.0, 20.0),
            ("speech_mamba", {}, 70.0, 5.1),
            ("speech_mamba", {"recompute_input_layer": True}, 75.0, 4.4))):
        f = tmp_path / f"{i}.json"
        f.write_text(json.dumps({"environment": env,
                                 "models": {model: {"params": 8e7, "conf": conf}},
                                 "results": [result(model, "train", 1, 300, ms, gib)]}))
        files.append(str(f))
    encoder_report.main(files)
    out = capsys.readouterr().out
    assert "| target | speech_mamba | speech_mamba+recompute |" in out
    assert ("| train B1 300 s: >= 4x, memory <= 0.25x | FAIL 5.71x, memory 0.255x | "
            "PASS 5.33x, memory 0.220x |") in out


def test_report_refuses_runs_of_different_settings():
    """Runs with another amp setting (or GPU, torch, repeats) are not merged into one table."""
    runs = [{"environment": {"command": "a"}, "settings": {"amp": amp}, "models": {},
             "results": []} for amp in ("bf16", "none")]
    with pytest.raises(SystemExit, match="settings amp"):
        encoder_report.merged(runs)
