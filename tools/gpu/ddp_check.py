"""ESPnet's own distributed data-parallel training with the plugin's models.

    python tools/gpu/ddp_check.py OUT_DIR                  # 2 GPUs: parts A and B, nccl
    python tools/gpu/ddp_check.py OUT_DIR --ngpu 0         # CPU smoke: both parts, gloo, tiny

Part A: the stock ``asr_train --ngpu 2 --multiprocessing_distributed true`` (ESPnet spawns one
process per GPU and wraps the model in DistributedDataParallel with
``find_unused_parameters=--unused_parameters``, default false) for each of synth_runs.MODELS on
the synthetic tone data, a few short epochs (``--num_iters_per_epoch``).  Checks: rc 0, every
epoch done, train/valid losses and grad norms finite, no unused-parameter error, the log shows
world size 2.  (Without ``--multiprocessing_distributed true``, ``--ngpu 2`` is one process with
``torch.nn.DataParallel``, not DDP.)  CPU smoke: ``torchrun --nproc_per_node 2`` with
``--ngpu 0 --multiprocessing_distributed false --dist_backend gloo`` (ESPnet's external-launcher
mode, which reads RANK/WORLD_SIZE/MASTER_* from the environment).

Part B: gradient equality.  Each model is built by ``ASRTask.build_model`` (feature input, dropout
0), wrapped as ESPnet wraps it (``DistributedDataParallel(find_unused_parameters=False,
gradient_as_bucket_view=True)``); each of the 2 ranks gets ESPnet's shard of one global batch
(``batch[rank::world_size]``, padded to its own longest utterance) and does what ESPnet's trainer
does with the loss in distributed mode (``loss * weight`` summed, ``recursive_average`` over
ranks, ``* world_size``), then backward.  Rank 0 also runs one single-process step on the whole
batch with a copy of the same model; the all-reduced DDP gradients must equal its gradients
(per parameter max|diff| <= rtol * max(max|g|, 1e-4 * the model's largest gradient): the floor is
for gradients that are 0 up to rounding, like the attention key bias, which softmax cancels).  ESPnet's ASR loss is a mean over utterances (CTC and
attention losses summed and divided by the batch size, length_normalized_loss false), so this
holds for equal halves and, through the trainer's weighting, for unequal shards too (checked:
global batch 7 -> 4 + 3).  Also checked: every parameter has a gradient on every rank, the
ranks' gradients are identical, and a second DDP iteration runs (DDP with
find_unused_parameters=False raises there if a parameter got no gradient in the first).  On CUDA
TF32 is off (matmul, cuDNN, triton's fp32 dot) so fp32 means fp32.

Writes OUT_DIR/ddp_check.json and prints it; exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth_runs import (MODELS, SIZES, collect_stats, common_args, epoch_results,  # noqa: E402
                        make_dataset, nan_in_log, shape_args, skipped_steps, train_config,
                        write_yaml)

UNUSED_ERRORS = ("Expected to have finished reduction", "find_unused_parameters",
                 "did not receive grad", "unused parameters")
VOCAB = ["<blank>", "<unk>", "a", "b", "c", "d", "e", "<sos/eos>"]
IDIM = 20
FLOOR = 1e-4  # part B: relative differences are taken against max(max|g|, FLOOR * max grad)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Part B: gradient equality


def build_model(name: str, size: str, token_list: Path):
    """ASRTask.build_model from command-line options (feature input of IDIM dims, dropout 0)."""
    import torch  # noqa: F401
    from espnet2.tasks.asr import ASRTask

    enc, enc_conf, dec, dec_conf = SIZES[size][name]
    enc_conf = dict(enc_conf, dropout_rate=0.0)
    dec_conf = dict(dec_conf, dropout_rate=0.0)
    if enc == "speech_mamba":
        enc_conf["attention_dropout_rate"] = 0.0
    if dec == "speech_mamba":
        dec_conf["attention_dropout_rate"] = 0.0
    cli = ["--token_list", str(token_list), "--input_size", str(IDIM),
           "--encoder", enc, "--encoder_conf", json.dumps(enc_conf),
           "--decoder", dec, "--decoder_conf", json.dumps(dec_conf),
           "--model_conf", json.dumps({"ctc_weight": 0.3, "lsm_weight": 0.1,
                                       "length_normalized_loss": False})]
    args = ASRTask.get_parser().parse_args(cli)
    return ASRTask.build_model(args)


def make_batch(n: int, seed: int):
    """A fixed global batch of ``n`` utterances: random features (60-100 frames), 2-6 tokens."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(60, 101, (n,), generator=g)
    tlens = torch.randint(2, 7, (n,), generator=g)
    feats = [torch.randn(int(t), IDIM, generator=g) for t in lens]
    texts = [torch.randint(2, len(VOCAB) - 1, (int(t),), generator=g) for t in tlens]
    return feats, texts


def collate(feats, texts, device):
    """ESPnet's collate: pad speech with 0.0 and text with -1 to the longest in the (sub)batch."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    return {"speech": pad_sequence(feats, batch_first=True, padding_value=0.0).to(device),
            "speech_lengths": torch.tensor([len(f) for f in feats], device=device),
            "text": pad_sequence(texts, batch_first=True, padding_value=-1).to(device),
            "text_lengths": torch.tensor([len(t) for t in texts], device=device)}


def espnet_distributed_loss(model, batch, world_size: int):
    """trainer.py's train_one_epoch, distributed branch: returns the loss it backpropagates and
    the all-reduced (weighted-average) loss it reports."""
    import torch
    from espnet2.torch_utils.recursive_op import recursive_average

    loss, stats, weight = model(**batch)
    stats = {k: v for k, v in stats.items() if v is not None}
    loss = (loss * weight.type(loss.dtype)).sum()
    stats, weight = recursive_average(stats, weight, True)
    loss /= weight
    loss *= torch.distributed.get_world_size()
    return loss, float(stats["loss"])


def _grad_worker(rank, world_size, port, names, size, device_kind, splits, rtol, seed, out_file):
    import faulthandler

    import torch

    faulthandler.enable()
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device_kind == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        device = torch.device("cuda", rank)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=300))
    token_list = Path(tempfile.gettempdir()) / f"ddp_check_tokens_{os.getpid()}.txt"
    token_list.write_text("".join(t + "\n" for t in VOCAB))
    results = {}
    try:
        for name in names:
            for split, n in splits.items():
                key = f"{name}/{split}"
                t0 = time.time()
                try:
                    results[key] = _grad_case(rank, world_size, name, size, device, n, rtol,
                                              seed, token_list)
                except Exception as e:  # record and go on (a DDP error names the parameters)
                    results[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:3000]}
                    if "Expected to have finished reduction" not in str(e):
                        raise
                results[key]["seconds"] = round(time.time() - t0, 1)
                if rank == 0:
                    print(f"[ddp_check B] {key}: " + json.dumps(results[key])[:400], flush=True)
    finally:
        if rank == 0:
            Path(out_file).write_text(json.dumps(results, indent=1))
        token_list.unlink(missing_ok=True)
        dist.destroy_process_group()


def _grad_case(rank, world_size, name, size, device, n, rtol, seed, token_list):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(seed)
    model = build_model(name, size, token_list).to(device)
    model.train()  # as in training; dropout is 0, so the forward is deterministic
    ref = copy.deepcopy(model) if rank == 0 else None
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                  else None, find_unused_parameters=False,
                                  gradient_as_bucket_view=True)
    feats, texts = make_batch(n, seed)
    shard = collate(feats[rank::world_size], texts[rank::world_size], device)  # ESPnet's sharding
    loss, reported = espnet_distributed_loss(ddp, shard, world_size)
    loss.backward()
    named = dict(model.named_parameters())
    no_grad = sorted(k for k, p in named.items() if p.requires_grad and p.grad is None)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in named.values()]).double()
    rank0 = flat.clone()
    dist.broadcast(rank0, 0)
    rank_diff = (flat - rank0).abs().max()
    dist.all_reduce(rank_diff, op=dist.ReduceOp.MAX)
    counts = torch.tensor([len(no_grad)], device=device)
    dist.all_reduce(counts)

    out = {"global_batch": n, "shards": [len(feats[r::world_size]) for r in range(world_size)],
           "params": len(named), "params_without_grad": no_grad,
           "params_without_grad_all_ranks": int(counts), "max_diff_between_ranks":
           float(rank_diff)}
    if rank == 0:
        full_loss, _, _ = ref(**collate(feats, texts, device))
        full_loss.backward()
        out["loss_single"] = float(full_loss.detach())
        out["loss_ddp_reported"] = reported
        ref_named = dict(ref.named_parameters())
        out["ref_params_without_grad"] = sorted(k for k, p in ref_named.items()
                                                if p.requires_grad and p.grad is None)
        worst, worst_name, max_abs, num, den = 0.0, None, 0.0, 0.0, 0.0
        # per parameter max|diff| / max|g|, with max|g| floored at FLOOR x the largest gradient
        # of the model: some gradients are 0 up to rounding (e.g. the attention key bias, which
        # softmax cancels: ~1e-9 of noise on both sides, relative difference ~1)
        g_max = max(p.grad.abs().max().item() for p in ref_named.values() if p.grad is not None)
        tiny = []
        for k, p in named.items():
            g, r = p.grad, ref_named[k].grad
            if g is None or r is None:
                continue
            d = (g.double() - r.double()).abs()
            r_max = r.double().abs().max().item()
            if r_max < FLOOR * g_max:
                tiny.append(k)
            scale = max(r_max, FLOOR * g_max)
            rel = d.max().item() / scale if scale > 0 else (0.0 if d.max() == 0 else math.inf)
            max_abs = max(max_abs, d.max().item())
            num += float((d ** 2).sum())
            den += float((r.double() ** 2).sum())
            if rel > worst:
                worst, worst_name = rel, k
        out.update(max_abs_diff=max_abs, max_rel_diff_per_param=worst,
                   worst_param=worst_name, params_with_tiny_grad=tiny, global_rel_diff=math.sqrt(num / den) if den else 0.0,
                   rtol=rtol)
    # a second iteration: with find_unused_parameters=False DDP raises here if a parameter got
    # no gradient in the first one
    model.zero_grad(set_to_none=True)
    feats2, texts2 = make_batch(n, seed + 1)
    loss2, _ = espnet_distributed_loss(
        ddp, collate(feats2[rank::world_size], texts2[rank::world_size], device), world_size)
    loss2.backward()
    out["second_iteration_ok"] = True
    if rank == 0:
        out["ok"] = bool(out["max_rel_diff_per_param"] <= rtol and not no_grad
                         and out["params_without_grad_all_ranks"] == 0
                         and not out["ref_params_without_grad"]
                         and out["max_diff_between_ranks"] == 0.0
                         and abs(out["loss_ddp_reported"] - out["loss_single"])
                         <= 1e-4 * max(1.0, abs(out["loss_single"])))
    return out


def grad_check(names, size="tiny", device_kind="cpu", world_size=2, splits=None, rtol=1e-4,
               seed=0) -> dict:
    """Part B for ``names`` in ``world_size`` spawned processes; {"model/split": result}."""
    import torch.multiprocessing as mp

    splits = splits or {"equal": 8, "unequal": 7}
    # (TORCH_DISTRIBUTED_DEBUG=DETAIL, which would name unused parameters in DDP's error, made a
    # gloo rank segfault here (torch 2.11 CPU); the names are in params_without_grad anyway.)
    if device_kind == "cuda":
        os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")  # before triton is imported (children)
    with tempfile.TemporaryDirectory() as tmp:
        out_file = Path(tmp) / "grad_check.json"
        mp.spawn(_grad_worker, nprocs=world_size, join=True,
                 args=(world_size, free_port(), list(names), size, device_kind, splits, rtol,
                       seed, str(out_file)))
        return json.loads(out_file.read_text())


# --------------------------------------------------------------------------------------------
# Part A: asr_train --ngpu 2


def train_ddp(out: Path, names, size, ngpu, epochs, iters, port_base, parallel, timeout):
    ds = make_dataset(out, repeat=16)
    common = common_args(ds, num_workers=1)
    stats = collect_stats(out, ds, common)
    jobs = {}
    for i, name in enumerate(names):
        exp = out / f"{name}-ddp"
        exp.mkdir(parents=True, exist_ok=True)
        write_yaml(exp / "train.yaml", train_config(name, stats, epochs, size))
        args = ["--config", exp / "train.yaml", *common, *shape_args(stats),
                "--num_iters_per_epoch", iters, "--log_interval", 10, "--output_dir", exp]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
        if ngpu > 0:
            cmd = [sys.executable, "-m", "espnet2.bin.asr_train", *args, "--ngpu", ngpu,
                   "--multiprocessing_distributed", "true",
                   "--dist_master_port", port_base + i]
        else:  # external-launcher mode on the CPU: torchrun sets RANK, WORLD_SIZE, MASTER_*
            env["OMP_NUM_THREADS"] = "1"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", str(port_base + i), "-m", "espnet2.bin.asr_train", *args,
                   "--ngpu", 0, "--multiprocessing_distributed", "false",
                   "--dist_backend", "gloo"]
        jobs[name] = (exp, [str(c) for c in cmd], env)
    results = {}
    running = {}
    pending = list(names)
    t_start = time.time()
    while pending or running:
        while pending and len(running) < parallel:
            name = pending.pop(0)
            exp, cmd, env = jobs[name]
            log = open(exp / "train.log", "w")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              env=env, process_group=0), time.time())
        time.sleep(2)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is None and time.time() - t_start > timeout:
                os.killpg(proc.pid, 9)
                proc.wait()
            if proc.poll() is not None:
                del running[name]
                results[name] = _part_a_result(jobs[name][0], proc.returncode,
                                               time.time() - t0, epochs, iters)
                print(f"[ddp_check A] {name}: " + json.dumps(
                    {k: v for k, v in results[name].items() if k != "log_tail"})[:600],
                    flush=True)
    return results


def _part_a_result(exp: Path, rc, seconds, epochs, iters):
    log = (exp / "train.log").read_text(errors="replace")
    res = epoch_results(log)
    values = [v for r in res.values() for part in ("train", "valid")
              for k, v in r[part].items() if k in ("loss", "grad_norm")]
    unused = [m for m in UNUSED_ERRORS if m in log]
    out = {"rc": rc, "seconds": round(seconds, 1), "epochs_done": max(res, default=0),
           "iterations_per_epoch": iters,
           "train_loss": {e: r["train"].get("loss") for e, r in sorted(res.items())},
           "valid_loss": {e: r["valid"].get("loss") for e, r in sorted(res.items())},
           "grad_norm": {e: r["train"].get("grad_norm") for e, r in sorted(res.items())},
           "skipped_steps": sum(skipped_steps(log).values()),
           "finite": bool(values) and all(math.isfinite(v) for v in values),
           "nan_or_inf_in_log": nan_in_log(log),
           "world_size_2_in_log": ":0/2]" in log or "world_size=2" in log.replace(" ", ""),
           "unused_parameter_messages": unused,
           "checkpoint": (exp / "checkpoint.pth").exists()}
    out["ok"] = bool(rc == 0 and out["epochs_done"] == epochs and out["finite"]
                     and not out["nan_or_inf_in_log"] and out["world_size_2_in_log"]
                     and not unused and out["checkpoint"])
    if not out["ok"]:
        out["log_tail"] = log[-3000:]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--ngpu", type=int, default=2, help="0: CPU smoke (gloo, 2 processes)")
    ap.add_argument("--parts", nargs="+", default=["b", "a"], choices=["a", "b"])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--size", choices=["full", "tiny"], default=None,
                    help="default: full with GPUs, tiny with --ngpu 0")
    ap.add_argument("--epochs", type=int, default=3, help="part A epochs")
    ap.add_argument("--iters", type=int, default=40, help="part A iterations per epoch")
    ap.add_argument("--parallel", type=int, default=3, help="part A runs at a time")
    ap.add_argument("--timeout", type=float, default=420, help="part A: kill runs after this")
    ap.add_argument("--rtol", type=float, default=1e-4, help="part B tolerance")
    ap.add_argument("--port-base", type=int, default=29517)
    a = ap.parse_args()
    size = a.size or ("full" if a.ngpu > 0 else "tiny")
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    cuda = a.ngpu > 0
    if cuda:
        assert torch.cuda.device_count() >= a.ngpu, \
            f"--ngpu {a.ngpu} but {torch.cuda.device_count()} GPUs visible"
    summary = {"ngpu": a.ngpu, "size": size, "torch": torch.__version__,
               "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
               if cuda else ["cpu"]}
    t0 = time.time()
    if "b" in a.parts:
        tb = time.time()
        try:
            summary["part_b"] = grad_check(a.models, size, "cuda" if cuda else "cpu",
                                           world_size=2, rtol=a.rtol)
        except Exception as e:
            summary["part_b"] = {"error": {"ok": False, "error": f"{type(e).__name__}: {e}"}}
        summary["part_b_seconds"] = round(time.time() - tb, 1)
    if "a" in a.parts:
        ta = time.time()
        summary["part_a"] = train_ddp(out, a.models, size, a.ngpu, a.epochs, a.iters,
                                      a.port_base, a.parallel, a.timeout)
        summary["part_a_seconds"] = round(time.time() - ta, 1)
    summary["all_ok"] = all(r.get("ok") for part in ("part_a", "part_b")
                            for r in summary.get(part, {}).values())
    summary["total_seconds"] = round(time.time() - t0, 1)
    (out / "ddp_check.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    for k, r in summary.get("part_b", {}).items():
        print(f"B {k:28s} ok={r.get('ok')} max_rel={r.get('max_rel_diff_per_param')} "
              f"max_abs={r.get('max_abs_diff')} no_grad={r.get('params_without_grad')} "
              f"{r.get('error', '')[:200]}")
    for k, r in summary.get("part_a", {}).items():
        print(f"A {k:28s} ok={r['ok']} rc={r['rc']} epochs={r['epochs_done']} "
              f"loss={list(r['train_loss'].values())} {r['seconds']} s")
    print(f"all_ok={summary['all_ok']} total {summary['total_seconds']} s")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
