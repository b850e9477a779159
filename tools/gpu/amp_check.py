"""Mixed precision through the stock ``asr_train --use_amp true``: each model of
synth_runs.MODELS trained for ``--steps`` optimizer steps (default 2,000) in bf16 AND in fp16
autocast, all runs in parallel on one GPU.

    python tools/gpu/amp_check.py OUT_DIR                     # H100: 3 models x 2 dtypes
    python tools/gpu/amp_check.py OUT_DIR --ngpu 0 --steps 20 # CPU smoke of this script

How the dtype is chosen.  ESPnet 202611 has no amp-dtype option: ``espnet2/train/trainer.py``
sets a module global at import, ``autocast_args = dict(dtype=torch.bfloat16)`` when
``torch.cuda.is_bf16_supported()`` (so bf16 on an H100: what train_check.py ran) and ``{}``
(torch's CUDA default, fp16) otherwise, and wraps forward in
``autocast("cuda", enabled=use_amp, **autocast_args)`` with a ``GradScaler`` in both cases.  Each
run here is ``asr_train``'s own ``main()`` in a fresh interpreter that first sets that global to
the wanted dtype (LAUNCHER below): nothing else of ESPnet is touched.  ``--train_dtype`` is not
it: that casts the whole model (no fp32 master weights).

Non-finite gradients.  After ``scaler.unscale_`` the trainer computes the clipped grad norm; if
it is not finite it logs ``The grad norm is inf. Skipping updating the model.``, and
``scaler.step`` skips the update (``scaler.update`` then halves the fp16 loss scale).  Those
warnings are counted per epoch: a few in the first steps of fp16 are the scaler calibrating
(initial scale 65536), many would be a problem.

Per run the JSON summary (OUT_DIR/amp_check.json, also printed) has: rc, wall time, iterations
run, skipped (non-finite) steps, optimizer steps, per-epoch train loss / grad_norm / loss_scale /
valid loss, whether all of them are finite; from the final checkpoint: the dtype of every SSM
parameter (A_log, D, dt_proj.bias / dt_bias: must be float32) and whether every parameter is
finite; and a probe: the final model, one forward + backward under autocast of the run's dtype on
8 validation utterances (loss finite, SSM parameters and their gradients float32 and finite).

CPU smoke (``--ngpu 0``, tiny models by default): ``autocast("cuda")`` would be a no-op there, so
the launcher points ESPnet's autocast calls at the CPU device: the trainer's (fp16/bf16 CPU
autocast, no loss scaling: GradScaler is CUDA-only and disables itself) and ESPnetASRModel's
``autocast("cuda", enabled=autocast_frontend)`` that keeps the front-end in fp32 (without it, the
fp16 log-mel is -inf on silent frames: LogMel's ``clamp(min=1e-10)`` is 0 in fp16).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_runs import (MODELS, SSM_PARAM, collect_stats, common_args, epoch_results,  # noqa: E402
                        last_iteration, make_dataset, nan_in_log, shape_args, skipped_steps,
                        train_config, write_yaml)

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}

# `python -c LAUNCHER <torch dtype name> <asr_train args...>`: asr_train's main() with the
# trainer's autocast dtype set (the only thing changed).
LAUNCHER = r"""
import sys, torch
import espnet2.train.trainer as trainer
dtype = getattr(torch, sys.argv.pop(1))
trainer.autocast_args = dict(dtype=dtype)
if not torch.cuda.is_available():  # CPU smoke: ESPnet's autocast("cuda") calls on the CPU device
    import espnet2.asr.espnet_model as espnet_model
    for mod in (trainer, espnet_model):  # espnet_model: the front-end's autocast(enabled=False)
        mod.autocast = (lambda ac: lambda device_type, **kw: ac("cpu", **kw))(mod.autocast)
print(f"[amp_check] espnet2.train.trainer.autocast_args = {trainer.autocast_args}, "
      f"cuda: {torch.cuda.is_available()}", file=sys.stderr, flush=True)
from espnet2.bin.asr_train import main
main()
"""


def start_run(exp: Path, dtype: str, args: list, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log = open(exp / "train.log", "w")
    # own process group: at the deadline the run and its data-loader workers are stopped together
    return subprocess.Popen([sys.executable, "-c", LAUNCHER, DTYPES[dtype], *map(str, args)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0)


def stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            pass


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def summarize_log(log: str, iters_per_epoch: int, max_epoch: int) -> dict:
    results = epoch_results(log)
    skipped = skipped_steps(log)
    epochs = {}
    for e, r in sorted(results.items()):
        t, v = r["train"], r["valid"]
        epochs[e] = {"loss": t.get("loss"), "grad_norm": t.get("grad_norm"),
                     "loss_scale": t.get("loss_scale"), "valid_loss": v.get("loss"),
                     "skipped": skipped.get(e, 0)}
    done = max(results, default=0)
    iterations = done * iters_per_epoch
    if done < max_epoch:  # stopped inside an epoch: its last progress line
        last = last_iteration(log)
        if last and last[0] == done + 1:
            iterations += last[1]
    n_skipped = sum(skipped.values())
    values = [x for e in epochs.values() for k, x in e.items()
              if k in ("loss", "grad_norm", "valid_loss")]
    return {
        "epochs_done": done, "iterations": iterations, "skipped_steps": n_skipped,
        "optimizer_steps": iterations - n_skipped,
        "skipped_per_epoch": {e: n for e, n in sorted(skipped.items()) if n},
        "epochs": epochs,
        "losses_and_grad_norms_finite": bool(values) and all(finite(x) for x in values),
        "nan_or_inf_in_log": nan_in_log(log),
    }


def check_checkpoint(exp: Path, dtype: str, device: str, ds) -> dict:
    """The final checkpoint: SSM parameter dtypes, finiteness, and an autocast probe."""
    import numpy as np
    import soundfile
    import torch
    from espnet2.tasks.asr import ASRTask

    ckpt = exp / "checkpoint.pth"
    if not ckpt.exists():
        return {"error": "no checkpoint.pth (no epoch finished)"}
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    sd = state["model"]
    ssm = {k: str(v.dtype).replace("torch.", "") for k, v in sd.items() if SSM_PARAM.search(k)}
    out = {
        "checkpoint_epoch": int(os.path.basename(os.readlink(exp / "latest.pth")).split("epoch")[0])
        if (exp / "latest.pth").is_symlink() else None,
        "n_tensors": len(sd), "n_ssm_params": len(ssm),
        "ssm_param_dtypes": sorted(set(ssm.values())),
        "ssm_params_fp32": bool(ssm) and all(d == "float32" for d in ssm.values()),
        "non_fp32_ssm_params": sorted(k for k, d in ssm.items() if d != "float32"),
        "all_params_finite": all(bool(torch.isfinite(v).all()) for v in sd.values()
                                 if v.is_floating_point()),
        "nonfinite_params": sorted(k for k, v in sd.items()
                                   if v.is_floating_point() and not torch.isfinite(v).all()),
        "loss_scale_final": (float(state["scaler"]["scale"])
                             if state.get("scaler") and "scale" in state["scaler"] else None),
    }
    # probe: the trained model, forward + backward under autocast of the run's dtype
    model, _ = ASRTask.build_model_from_file(exp / "config.yaml", None, device)
    model.load_state_dict(sd, strict=True)
    model.train()
    tokens = {t: i for i, t in enumerate(ds.token_list.read_text(encoding="utf-8").split())}
    utts = sorted(ds.utts)[:8]
    wavs = [soundfile.read(str(ds.root / "wav" / f"{u}.wav"), dtype="float32")[0] for u in utts]
    texts = [[tokens[c] for c in ds.utts[u]] for u in utts]
    speech = torch.zeros(len(wavs), max(map(len, wavs)))
    text = torch.full((len(texts), max(map(len, texts))), -1, dtype=torch.long)
    for i, (w, t) in enumerate(zip(wavs, texts)):
        speech[i, :len(w)] = torch.from_numpy(np.asarray(w))
        text[i, :len(t)] = torch.tensor(t)
    batch = {"speech": speech, "speech_lengths": torch.tensor([len(w) for w in wavs]),
             "text": text, "text_lengths": torch.tensor([len(t) for t in texts])}
    batch = {k: v.to(device) for k, v in batch.items()}
    dev_type = "cuda" if device.startswith("cuda") else "cpu"
    if dev_type == "cpu":  # as LAUNCHER: the model's autocast("cuda", enabled=False) on the CPU
        import espnet2.asr.espnet_model as espnet_model
        if not getattr(espnet_model.autocast, "_amp_check", False):
            ac = espnet_model.autocast
            espnet_model.autocast = lambda device_type, **kw: ac("cpu", **kw)
            espnet_model.autocast._amp_check = True
    with torch.autocast(dev_type, dtype=getattr(torch, DTYPES[dtype])):
        loss = model(**batch)[0]
    loss.backward()
    named = dict(model.named_parameters())
    ssm_names = [k for k in named if SSM_PARAM.search(k)]
    out["probe"] = {
        "autocast": f"{dev_type}/{DTYPES[dtype]}", "loss": float(loss.detach()),
        "loss_finite": bool(torch.isfinite(loss)),
        "ssm_params_and_grads_fp32": all(named[k].dtype == torch.float32
                                         and named[k].grad is not None
                                         and named[k].grad.dtype == torch.float32
                                         for k in ssm_names),
        "all_grads_finite": all(bool(torch.isfinite(p.grad).all())
                                for p in named.values() if p.grad is not None),
        "params_without_grad": sorted(k for k, p in named.items()
                                      if p.requires_grad and p.grad is None),
    }
    del model
    if dev_type == "cuda":
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps per run (iterations)")
    ap.add_argument("--epochs", type=int, default=8,
                    help="the steps are split into this many epochs (--num_iters_per_epoch)")
    ap.add_argument("--ngpu", type=int, default=1, help="0: a CPU smoke run of this script")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--size", choices=["full", "tiny"], default=None,
                    help="model size: full (train_check.py's, default with --ngpu > 0) or tiny "
                         "(default with --ngpu 0)")
    ap.add_argument("--parallel", type=int, default=6, help="runs at a time")
    ap.add_argument("--deadline", type=float, default=480,
                    help="seconds for all training: runs still going then are stopped and "
                         "reported with the steps they reached")
    ap.add_argument("--num-workers", type=int, default=1, help="data-loader workers per run")
    ap.add_argument("--threads", type=int, default=None,
                    help="OMP_NUM_THREADS per run (default: cores / parallel, at least 1)")
    a = ap.parse_args()

    size = a.size or ("full" if a.ngpu > 0 else "tiny")
    t0 = time.time()
    out = Path(a.out).resolve()
    ipe = math.ceil(a.steps / a.epochs)
    ds = make_dataset(out, repeat=16)
    common = common_args(ds, num_workers=a.num_workers)
    stats = collect_stats(out, ds, common)
    print(f"[amp_check] data + stats: {time.time() - t0:.0f} s; {a.epochs} epochs x {ipe} "
          f"iterations = {a.epochs * ipe} steps per run", flush=True)
    runs = [(m, d) for m in a.models for d in a.dtypes]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = a.threads or max(1, cores // min(a.parallel, len(runs)))
    pending, active, info = list(runs), {}, {}
    start = time.time()
    deadline = start + a.deadline
    last_report = 0.0
    while pending or active:
        while pending and len(active) < a.parallel:
            m, d = pending.pop(0)
            exp = out / f"{m}-{d}"
            exp.mkdir(parents=True, exist_ok=True)
            write_yaml(exp / "train.yaml", train_config(m, stats, a.epochs, size))
            args = ["--config", exp / "train.yaml", *common, "--ngpu", a.ngpu,
                    "--use_amp", "true", "--num_iters_per_epoch", ipe, "--log_interval", 50,
                    *shape_args(stats), "--output_dir", exp]
            active[(m, d)] = start_run(exp, d, args, threads)
            info[(m, d)] = {"exp": exp, "start": time.time(), "stopped_at_deadline": False}
        time.sleep(2)
        for key, proc in list(active.items()):
            if proc.poll() is not None:
                info[key]["rc"] = proc.returncode
                info[key]["wall_s"] = round(time.time() - info[key]["start"], 1)
                del active[key]
                print(f"[amp_check] {key[0]}-{key[1]} finished rc={proc.returncode} in "
                      f"{info[key]['wall_s']} s", flush=True)
        now = time.time()
        if now > deadline:
            for key, proc in active.items():
                print(f"[amp_check] deadline: stopping {key[0]}-{key[1]}", flush=True)
                stop(proc)
                info[key].update(rc=proc.returncode, stopped_at_deadline=True,
                                 wall_s=round(time.time() - info[key]["start"], 1))
            active.clear()
            for m, d in pending:  # never started
                info[(m, d)] = {"exp": out / f"{m}-{d}", "rc": None, "wall_s": 0,
                                "stopped_at_deadline": True}
            pending.clear()
        elif now - last_report > 30:
            last_report = now
            prog = []
            for key in active:
                log = (info[key]["exp"] / "train.log").read_text(errors="replace")
                done = max(epoch_results(log), default=0)
                last = last_iteration(log)
                prog.append(f"{key[0]}-{key[1]}: epoch {done} done"
                            + (f", {last[0]}epoch iter {last[1]}" if last else ""))
            print(f"[amp_check] +{now - start:.0f} s " + " | ".join(prog), flush=True)
    train_wall = time.time() - start

    import torch
    device = "cuda" if a.ngpu > 0 and torch.cuda.is_available() else "cpu"
    summary = {"size": size, "steps_planned": a.epochs * ipe, "epochs": a.epochs, "iters_per_epoch": ipe,
               "ngpu": a.ngpu, "device": torch.cuda.get_device_name() if device == "cuda" else
               "cpu", "torch": torch.__version__, "train_wall_s": round(train_wall, 1),
               "runs": {}}
    for (m, d) in runs:
        i = info[(m, d)]
        exp = i["exp"]
        log = (exp / "train.log").read_text(errors="replace") if (exp / "train.log").exists() \
            else ""
        entry = {"model": m, "dtype": DTYPES[d], "rc": i.get("rc"), "wall_s": i.get("wall_s"),
                 "stopped_at_deadline": i["stopped_at_deadline"],
                 "launcher_line": next((ln for ln in log.splitlines()
                                        if ln.startswith("[amp_check]")), None),
                 **summarize_log(log, ipe, a.epochs)}
        try:
            entry["checkpoint"] = check_checkpoint(exp, d, device, ds)
        except Exception as e:  # report, do not lose the other runs' results
            entry["checkpoint"] = {"error": f"{type(e).__name__}: {e}"}
        ck = entry["checkpoint"]
        entry["ok"] = bool(
            entry["rc"] == 0 and entry["iterations"] == a.epochs * ipe
            and entry["losses_and_grad_norms_finite"] and not entry["nan_or_inf_in_log"]
            and ck.get("ssm_params_fp32") and ck.get("all_params_finite")
            and ck.get("probe", {}).get("loss_finite")
            and ck.get("probe", {}).get("ssm_params_and_grads_fp32")
            and ck.get("probe", {}).get("all_grads_finite")
            and entry["skipped_steps"] <= 0.05 * entry["iterations"])
        if entry["rc"] != 0:
            entry["log_tail"] = log[-2500:]
        summary["runs"][f"{m}-{d}"] = entry
    summary["all_ok"] = all(r["ok"] for r in summary["runs"].values())
    summary["total_wall_s"] = round(time.time() - t0, 1)
    (out / "amp_check.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1), flush=True)
    # a short table last (what a truncated console shows)
    print(f"\n{'run':28s} {'rc':>3s} {'iters':>6s} {'skip':>5s} {'loss 1st->last':>16s} "
          f"{'ssm fp32':>8s} {'finite':>6s} {'wall s':>7s} ok")
    for k, r in summary["runs"].items():
        ls = [e["loss"] for e in r["epochs"].values()]
        loss = f"{ls[0]:.3g}->{ls[-1]:.3g}" if ls else "-"
        ck = r["checkpoint"]
        print(f"{k:28s} {str(r['rc']):>3s} {r['iterations']:6d} {r['skipped_steps']:5d} "
              f"{loss:>16s} {str(ck.get('ssm_params_fp32')):>8s} "
              f"{str(ck.get('all_params_finite')):>6s} {str(r['wall_s']):>7s} {r['ok']}")
    print(f"all_ok={summary['all_ok']} train wall {train_wall:.0f} s, total {summary['total_wall_s']} s")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
