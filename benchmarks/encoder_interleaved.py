"""The short-length settings of benchmarks/encoder_gpu.py with the models timed in turn.

    python benchmarks/encoder_interleaved.py --out OUT.json \
        --models conformer_sdpa samba_asr samba_asr_wide --lengths 15 30 60
    python benchmarks/encoder_report.py OUT.json > OUT.md

Why: up to ~60 s of audio our encoders are bound by host work, and a GPU machine's host can be
noisy: on an H100 one model's ten runs of one setting spread over 150-219 ms, and its times
jumped between settings, while encoder_gpu.py measures the models one after the other, minutes
apart.  Here every model is built once and kept on the device; per setting each one is
warmed up, then the timed runs go round-robin (model 1, 2, 3, 1, 2, 3, ...), so a slow
period of the host hits all of them alike and the ratios in one setting compare like with like.

Same models, inputs, autocast and training step as encoder_gpu.py.  Peak memory: the
allocator's peak during the model's warm-up, less what the other models hold (their weights;
their gradients are freed after each of their runs).  A model that runs out of memory at one
length is not tried at longer ones.  The JSON has encoder_gpu.py's layout (encoder_report.py
reads it), with ``"interleaved": true`` in its settings.
"""

from __future__ import annotations

import json
import statistics

import torch

import encoder_gpu as eg


def resident_bytes(enc) -> int:
    return sum(p.numel() * p.element_size() for p in enc.parameters())


def measure_setting(encs: dict, mode, batch, seconds, device, args, timer) -> dict:
    """One setting for every model in ``encs``: {name: result dict as in encoder_gpu.py}."""
    frames = int(seconds * eg.FPS)
    cuda = device.type == "cuda"
    results, runs = {}, {}
    x = torch.randn(batch, frames, eg.FEATS, device=device)
    ilens = torch.full((batch,), frames, dtype=torch.long, device=device)
    for name, enc in encs.items():
        if mode == "infer" and name.endswith("_graphed"):
            continue  # graphs for training steps only
        res = results[name] = {"mode": mode, "batch": batch, "seconds": seconds,
                               "frames": frames, "model": name}
        enc.train(mode == "train")
        fn = eg.step_fn(enc, x, ilens, mode, device, args.amp)
        try:
            eg.free(device)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                others = torch.cuda.memory_allocated() - resident_bytes(enc)
            for _ in range(eg.warmup_runs(enc, args)):
                fn()
            timer.sync()
            if cuda:
                res["peak_gib"] = (torch.cuda.max_memory_allocated() - others) / 2**30
            runs[name] = fn
        except Exception as err:  # noqa: BLE001 - OOM is a result; anything else is raised
            if not eg.is_oom(err):
                raise
            res["error"] = "OOM"
        finally:
            enc.zero_grad(set_to_none=True)  # not counted in the next model's peak
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in list(runs.items()):
            try:
                times[name].append(timer.once(fn))
            except Exception as err:  # noqa: BLE001 - as in the warm-up
                if not eg.is_oom(err):
                    raise
                results[name]["error"] = "OOM"
                del runs[name], times[name]
            finally:
                encs[name].zero_grad(set_to_none=True)
    for name, t in times.items():
        results[name].update(times_ms=[round(v, 3) for v in t], median_ms=statistics.median(t))
    for name, enc in encs.items():
        if eg.is_graphed(enc):  # its graphs hold this setting's memory
            if name in results:
                eg.record_graphs(enc, results[name])
            enc.training_graphs.clear()
    eg.free(device)
    return results


def main(argv=None):
    ap = eg.setting_parser(__doc__, ["conformer_sdpa", "samba_asr", "speech_mamba",
                                     "samba_asr_wide"], [15, 30, 60])
    args = eg.parse_settings(ap, argv)
    device = torch.device(args.device)
    timer = eg.Timer(device)
    report = {"environment": eg.environment(device),
              "settings": vars(args) | {"out": str(args.out), "interleaved": True},
              "models": {}, "results": []}
    encs = {}
    for name in args.models:
        enc, conf = eg.build(name, args.tiny, args.recompute_input_layer)
        encs[name] = enc.to(device)
        report["models"][name] = {"params": sum(p.numel() for p in enc.parameters()),
                                  "class": type(enc).__name__, "conf": conf}
    for mode in args.modes:
        for batch in args.batches:
            alive = dict(encs)
            for seconds in sorted(args.lengths):
                res = measure_setting(alive, mode, batch, seconds, device, args, timer)
                for name, r in res.items():
                    report["results"].append(r)
                    if r.get("error") == "OOM":
                        del alive[name]
                    print(eg.result_line(r), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
