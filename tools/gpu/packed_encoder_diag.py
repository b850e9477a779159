"""Packed vs padded tiny encoders on the GPU, mixer call by mixer call.  GPU diagnostic.

    MAMBA_DETERMINISTIC=1 python3 tools/gpu/packed_encoder_diag.py OUT.json

tools/gpu/packed_diag.py found every ``seq_idx`` piece equal to each sequence run alone
(< 1e-5, H100, 2026-11-22), and the benchmark's full-size packed loss equal to the padded one,
yet tests/gpu/test_models_cuda.py::test_packed_encoder_cuda (the tiny encoders of
tests/model_checks.py) finds packed and padded 0.6-1.9 % apart.  This runs that comparison with
forward hooks on every Mamba2 mixer and prints, per mixer call, how far the packed run's input
and output are from the padded run's (valid frames only).  At the first call whose output
differs while its input does not, that mixer is run again on the packed input three ways: the
packed path, each utterance alone (the fused kernel, no mask) and the padded batch (mask), so
the odd one out is named.  MAMBA_DETERMINISTIC=1: see packed_diag.py.

It keeps that test's old loss on purpose, to reproduce it.  What it showed (session 7,
docs/benchmarks.md): the loss was nearly constant, so its gradients were mostly rounding noise;
each utterance alone is the reference that says so.  The test now uses a projection loss.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import torch  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

LENGTHS = {"test's (70,23,51,9)": [70, 23, 51, 9], "no short one (70,40,51,30)": [70, 40, 51, 30]}


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def build(name, bidirectional, pack):
    from espnet_mamba.encoders.samba_asr import SambaASREncoder
    from espnet_mamba.encoders.speech_mamba import SpeechMambaEncoder
    cls = {"samba_asr": SambaASREncoder, "speech_mamba": SpeechMambaEncoder}[name]
    torch.manual_seed(0)
    return cls(20, output_size=64, num_blocks=2, mixer="mamba2", d_state=16, dropout_rate=0.0,
               mixer_conf={"headdim": 16}, bidirectional=bidirectional, backend="cuda",
               pack_sequences=pack).cuda().train()


def run(enc, x, il):
    """Output (masked), input-layer weight gradient, and each Mamba2 call's (input, output,
    kwargs) in call order."""
    from espnet_mamba.modules.mamba2 import Mamba2
    calls = []

    def hook(mod, args, kwargs, out):
        grads = {}
        calls.append((mod, args[0].detach(), out.detach(), dict(kwargs), grads))
        if args[0].requires_grad:
            args[0].register_hook(lambda g: grads.__setitem__("in", g.detach()))
        out.register_hook(lambda g: grads.__setitem__("out", g.detach()))
    handles = [m.register_forward_hook(hook, with_kwargs=True)
               for m in enc.modules() if isinstance(m, Mamba2)]
    try:
        y, ol, _ = enc(x, il)
        mask = (torch.arange(y.shape[1], device="cuda")[None] < ol[:, None])[..., None]
        (y * mask).pow(2).sum().backward()
    finally:
        for h in handles:
            h.remove()
    grads = {n: p.grad for n, p in enc.named_parameters() if p.grad is not None}
    return y * mask, grads, calls


def triage(mod, x_packed, packing):
    """The mixer on one packed input: packed path vs each utterance alone vs padded batch."""
    from espnet_mamba.modules import mamba2
    with torch.no_grad():
        saved = mamba2.PACKED_PATH
        outs = {}
        for path in ("fused", "unfused", "padded"):
            mamba2.PACKED_PATH = path
            outs[f"packed:{path}"] = mod(x_packed, packing=packing)
        mamba2.PACKED_PATH = saved
        alone, start = [], 0
        for n in packing.lengths.tolist():
            alone.append(mod(x_packed[:, start:start + n]))  # no mask: the fused kernel
            start += n
        outs["alone"] = torch.cat(alone, 1)
        padded = packing.unpack(x_packed)
        outs["padded batch"] = packing.pack(mod(padded, packing.lengths))
    names = list(outs)
    return {f"{a} vs {b}": rel(outs[a], outs[b])
            for i, a in enumerate(names) for b in names[i + 1:]}


def compare(name, bidirectional, lengths, path):
    from espnet_mamba.modules import mamba2
    padded, packed = build(name, bidirectional, False), build(name, bidirectional, True)
    packed.load_state_dict(padded.state_dict())
    torch.manual_seed(1)
    x = torch.randn(len(lengths), max(lengths), 20, device="cuda")
    il = torch.tensor(lengths, device="cuda")
    y_pad, g_pad, calls_pad = run(padded, x, il)
    saved, mamba2.PACKED_PATH = mamba2.PACKED_PATH, path
    try:
        y_pk, g_pk, calls_pk = run(packed, x, il)
    finally:
        mamba2.PACKED_PATH = saved
    # the ground truth of the gradients: each utterance alone (batch of one, the same padded
    # input, so the input layer sees the same frames), gradients summed over the utterances
    alone = build(name, bidirectional, False)
    alone.load_state_dict(padded.state_dict())
    for i in range(len(lengths)):
        y, ol, _ = alone(x[i:i + 1], il[i:i + 1])
        mask = (torch.arange(y.shape[1], device="cuda")[None] < ol[:, None])[..., None]
        (y * mask).pow(2).sum().backward()
    g_alone = {n: p.grad for n, p in alone.named_parameters() if p.grad is not None}
    names = sorted(g_alone, key=lambda n: -rel(g_pad[n], g_alone[n]))[:4]
    names_pk = sorted(g_alone, key=lambda n: -rel(g_pk[n], g_alone[n]))[:4]
    alone_res = {"padded vs alone (worst)": {n: rel(g_pad[n], g_alone[n]) for n in names},
                 "packed vs alone (worst)": {n: rel(g_pk[n], g_alone[n]) for n in names_pk}}
    params = {n: rel(g_pk[n], g_pad[n]) for n in g_pad}
    res = {"out": rel(y_pk, y_pad), "input-layer grad": params["embed.embed.conv.0.weight"],
           "worst parameter grads": dict(sorted(params.items(), key=lambda kv: -kv[1])[:6]),
           "calls": [], **alone_res}
    for i, ((_, xi_a, yo_a, _, gr_a), (mod, xi_k, yo_k, kw_k, gr_k)) in enumerate(
            zip(calls_pad, calls_pk)):
        packing = kw_k.get("packing")
        if packing is None:
            res["calls"].append({"call": i, "note": "no packing kwarg"})
            continue
        c = {"call": i, "in": rel(xi_k, packing.pack(xi_a)) if xi_a.shape[0] > 1 else None,
             "out": rel(yo_k, packing.pack(yo_a)) if yo_a.shape[0] > 1 else None}
        for k in ("out", "in"):  # gradients w.r.t. the call's output and input, valid frames
            if k in gr_a and k in gr_k and gr_a[k].shape[0] > 1:
                c[f"grad_{k}"] = rel(gr_k[k], packing.pack(gr_a[k]))
                # what the padded run sends to padded frames (packing drops them)
                c[f"grad_{k}_padded_frames"] = (gr_a[k].abs().sum() - packing.pack(
                    gr_a[k]).abs().sum()).item()
        if c["in"] is not None and c["in"] < 1e-5 and c["out"] > 1e-4 and "triage" not in res:
            res["triage"] = {"call": i, **triage(mod, xi_k, packing)}
        res["calls"].append(c)
    return res


def main(argv):
    from mamba_ssm.utils import determinism
    determinism.set_deterministic_mode(False)
    report = {}
    for name in ("samba_asr", "speech_mamba"):
        for bidirectional in (False, True):
            for label, lengths in LENGTHS.items():
                for path in ("fused",) if bidirectional else ("fused", "unfused"):
                    key = f"{name} bidir={bidirectional} {label} {path}"
                    try:
                        res = compare(name, bidirectional, lengths, path)
                    except Exception as err:  # noqa: BLE001 - a diagnostic: report, go on
                        res = {"error": f"{type(err).__name__}: {err}"}
                    report[key] = res
                    calls = " ".join(
                        f"[{c['call']}] in {c['in']:.1e} out {c['out']:.1e} dout "
                        f"{c.get('grad_out', float('nan')):.1e} din "
                        f"{c.get('grad_in', float('nan')):.1e} pad-din "
                        f"{c.get('grad_in_padded_frames', float('nan')):.1e}"
                        for c in res.get("calls", []) if c.get("in") is not None)
                    print(f"{key}: out {res.get('out', float('nan')):.1e} grad "
                          f"{res.get('input-layer grad', float('nan')):.1e} | {calls}"
                          f"{' | error ' + res['error'] if 'error' in res else ''}", flush=True)
                    for k in ("worst parameter grads", "padded vs alone (worst)",
                              "packed vs alone (worst)"):
                        print(f"   {k}:", json.dumps(res.get(k)), flush=True)
                    if "triage" in res:
                        print("   triage:", json.dumps(res["triage"]), flush=True)
                    if argv:
                        with open(argv[0], "w") as f:
                            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
