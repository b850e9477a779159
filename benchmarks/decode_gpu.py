"""Decoding speed of our Mamba decoders vs ESPnet's Transformer decoder, with ESPnet's own beam
search: (a) the time of one ``batch_score`` step vs the prefix length, (b) the real-time factor
of a whole joint CTC/attention decode of a 60 s utterance.

Made for one run on a GPU (NVIDIA H100, mamba-ssm / causal-conv1d kernels installed); ``--tiny``
runs the same code at toy sizes on a CPU in seconds (tests/benchmarks/test_decode_benchmark.py).

    # GPU (on an offline machine: bash tools/gpu/offline_run.sh python3 benchmarks/...)
    python3 benchmarks/decode_gpu.py --device cuda --out decode_gpu.json --plot decode_gpu.png
    # CPU smoke run
    python benchmarks/decode_gpu.py --device cpu --tiny --out /tmp/d.json --plot /tmp/d.png

Models (random weights, seeded, eval mode, fp32 weights; ``--amp bf16`` autocasts):
  transformer   espnet2.asr.decoder.transformer_decoder.TransformerDecoder, 6 blocks, 512 wide,
                8 heads, 2048 linear units (the baseline);
  samba_asr     espnet_mamba's samba_asr decoder, d_model 512;
  speech_mamba  espnet_mamba's speech_mamba decoder, d_model 512, 8 heads;
  (ours step as CUDA graphs on a GPU, as shipped: espnet_mamba/graphs/decoding.py)
  samba_asr_eager, speech_mamba_eager  (only if named in ``--decoders``) the same decoders and
                weights with the execution option ``cuda_graphs: false``: the step launched
                op by op;
  the number of blocks of ours is chosen so that the parameter count is closest to the
  Transformer's (``--samba-blocks`` / ``--speech-mamba-blocks`` override).  Vocabulary 5000,
  encoder output 512; a 60 s utterance is 1500 encoder frames (100 frames/s, 4x subsampling);
  the encoder output is a random tensor (the encoder is not timed).

(a) ``batch_score`` per step.  10 running hypotheses of one utterance (as BatchBeamSearch holds
    them: the encoder output expanded over the beam, one state per hypothesis).  The states are
    built by feeding a random prefix through ``batch_score`` token by token (the hypotheses
    reshuffled between steps, as the beam's pruning does), then the step that scores the token
    after a prefix of P tokens (``ys`` = <sos> + P tokens) is timed: median of ``--repeats``
    runs after ``--warmup`` runs, CUDA events on a GPU, time.perf_counter on a CPU.
(b) Whole decode: espnet2.legacy.nets.batch_beam_search.BatchBeamSearch (what Speech2Text
    uses for one utterance), beam 10, weights decoder 0.7 / CTC 0.3 / length bonus 0, pre-beam on
    the full score as in Speech2Text, CTCPrefixScorer over a random espnet2.asr.ctc.CTC(5000,
    512).  CTC windowing: ``--ctc-window-margin`` (default 100, Speech2Text's default
    ``--ctc_window_margin``: the windowed CTC prefix score; 0 = exact, whole utterance per step).
    A fixed number of steps is forced: maxlen = N (maxlenratio = -N) and minlen = N - 1
    (minlenratio = -(N - 1)); BeamSearch drops a hypothesis that ends before minlen, and the last
    step appends <eos> to every running one.  So that the beam stays full, <eos> is made
    unlikely in every decoder (output-layer bias of <eos> = -1e4; compute is unchanged); the
    number of steps and of running hypotheses per step are counted and checked.  RTF = median
    decode seconds / audio seconds; only the beam search is timed (with the decoders' per-
    utterance start state: part of the decode).

Output: a table on stdout, and with ``--out`` a JSON file of all raw timings, medians, ratios,
the sizes, versions and the command line (written after every section, so a run cut short
keeps what it measured).  ``--plot`` draws ms per step vs prefix length (matplotlib);
``--profile`` writes torch.profiler tables of a few steps per decoder (host vs GPU time per
step, kernel launches per step into the JSON).  A decoder that fails is recorded with its error
and the others still run; the exit status is then 1.

On an H100 a run with the default settings took about 65 s (bf16) / 105 s (fp32) after
start-up.  Results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

try:  # ESPnet >= 202611 keeps the beam search under espnet2.legacy
    from espnet2.legacy.nets.batch_beam_search import BatchBeamSearch
    from espnet2.legacy.nets.scorers.ctc import CTCPrefixScorer
    from espnet2.legacy.nets.scorers.length_bonus import LengthBonus
except ImportError:  # older ESPnet
    from espnet.nets.batch_beam_search import BatchBeamSearch
    from espnet.nets.scorers.ctc import CTCPrefixScorer
    from espnet.nets.scorers.length_bonus import LengthBonus

from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet_mamba.decoders.samba_asr import SambaASRDecoder
from espnet_mamba.decoders.speech_mamba import SpeechMambaDecoder
from espnet_mamba.modules.execution import set_execution
from espnet_mamba.ops import backend as ops_backend

DECODERS = ("transformer", "samba_asr", "speech_mamba")
# not run unless named in --decoders: ours without CUDA graphs (what the graphs save)
VARIANTS = ("samba_asr_eager", "speech_mamba_eager")
OURS = ("samba_asr", "speech_mamba")
FRAMES_PER_SECOND = 100 / 4  # 10 ms frame shift, 4x subsampling
EOS_BIAS = -1.0e4

FULL = dict(vocab=5000, d_model=512, heads=8, linear_units=2048, transformer_blocks=6,
            d_state=16, expand=2.0, beam=10, seconds=60.0, prefix_lengths=[10, 20, 40, 80, 160],
            # 7 whole decodes each: on a noisy host one decoder's three decodes spread
            # 3.40-4.02 s (H100), too wide for a median of 3
            repeats=40, warmup=5, decode_steps=200, decode_repeats=7)
TINY = dict(vocab=40, d_model=32, heads=4, linear_units=64, transformer_blocks=2,
            d_state=4, expand=2.0, beam=10, seconds=2.0, prefix_lengths=[2, 4, 8],
            repeats=3, warmup=1, decode_steps=6, decode_repeats=1)
TARGETS = {"speedup_vs_transformer_min": 3.0, "flatness_max": 1.1}


# --- set-up -----------------------------------------------------------------------------------
def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build(name: str, cfg: dict, num_blocks: int, backend: str | None):
    d, vocab = cfg["d_model"], cfg["vocab"]
    name = base_name(name)
    if name == "transformer":
        return TransformerDecoder(vocab, d, attention_heads=cfg["heads"],
                                  linear_units=cfg["linear_units"], num_blocks=num_blocks)
    mamba = dict(num_blocks=num_blocks, dropout_rate=0.0, mixer=cfg["mixer"],
                 d_state=cfg["d_state"], expand=cfg["expand"], backend=backend)
    if name == "samba_asr":
        return SambaASRDecoder(vocab, d, **mamba)
    return SpeechMambaDecoder(vocab, d, attention_heads=cfg["heads"], **mamba)


def base_name(name: str) -> str:
    """samba_asr_eager -> samba_asr: the decoder a variant is built from."""
    return name.removesuffix("_eager")


def decoder_config(name: str, cfg: dict, num_blocks: int) -> dict:
    name = base_name(name)
    conf = {"vocab_size": cfg["vocab"], "encoder_output_size": cfg["d_model"],
            "num_blocks": num_blocks}
    if name == "transformer":
        conf.update(attention_heads=cfg["heads"], linear_units=cfg["linear_units"])
    else:
        conf.update(mixer=cfg["mixer"], d_state=cfg["d_state"], expand=cfg["expand"],
                    d_conv=4)
        if name == "speech_mamba":
            conf["attention_heads"] = cfg["heads"]
    return conf


def matching_blocks(name: str, cfg: dict, target: int, backend: str | None) -> int:
    """The number of blocks whose parameter count is closest to ``target`` (counts are linear
    in the number of blocks: measured at 1 and 2 blocks)."""
    p1 = n_params(_build(name, cfg, 1, backend))
    per_block = n_params(_build(name, cfg, 2, backend)) - p1
    return max(1, 1 + round((target - p1) / per_block))


def build_decoders(cfg: dict, names, device, backend: str | None, seed: int,
                   blocks: dict | None = None) -> dict:
    """{name: (decoder in eval mode on device, info)}; info has the sizes and param counts."""
    blocks = dict(blocks or {})
    blocks.setdefault("transformer", cfg["transformer_blocks"])
    target = None
    out = {}
    for name in names:
        if blocks.get(name) is None:
            if target is None:
                torch.manual_seed(seed)
                target = n_params(_build("transformer", cfg, blocks["transformer"], backend))
            blocks[name] = matching_blocks(name, cfg, target, backend)
        torch.manual_seed(seed)
        dec = _build(name, cfg, blocks[name], backend)
        with torch.no_grad():  # keep the beam full: see the module docstring
            dec.output_layer.bias[cfg["eos"]] = EOS_BIAS
        dec = dec.to(device).eval()
        if name.endswith("_eager"):
            set_execution(dec, cuda_graphs=False)
        out[name] = (dec, {"class": f"{type(dec).__module__}.{type(dec).__qualname__}",
                           "params": n_params(dec),
                           "config": decoder_config(name, cfg, blocks[name])})
    return out


def amp_context(device: torch.device, amp: str):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device):
    """(time, wall time) of one ``fn()`` in ms.  On CUDA the time is a CUDA-event time (start
    event recorded before the call is issued, end event after it: it includes the host's
    launch overhead whenever the GPU waits for the host), the wall time includes the final
    synchronisation; on a CPU both are time.perf_counter."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end), (time.perf_counter() - t0) * 1e3


def time_interleaved(fns: dict, device: torch.device, repeats: int, warmup: int,
                     min_warmup_s: float = 0.0):
    """Time several calls in rounds (one call of each per round, the order reversed every other
    round), so that drift (clocks, caches, a busy host) spreads evenly over them.

    Warm-up: ``warmup`` rounds, and more until ``min_warmup_s`` seconds have passed.
    Returns {key: (times, wall times)} in ms."""
    keys = list(fns)
    t0 = time.perf_counter()
    done = 0
    while done < warmup or time.perf_counter() - t0 < min_warmup_s:
        for k in keys:
            fns[k]()
        sync(device)
        done += 1
    out = {k: ([], []) for k in keys}
    for r in range(repeats):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            t, w = time_call(fns[k], device)
            out[k][0].append(t)
            out[k][1].append(w)
    return out


def _summary(times):
    s = sorted(times)
    return {"median_ms": statistics.median(s), "min_ms": s[0],
            "p90_ms": s[min(len(s) - 1, int(0.9 * len(s)))]}


def peak_mib(device: torch.device):
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def reset_peak(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


# --- (a) one batch_score step -----------------------------------------------------------------
def prefix_states(decoder, x, ys, prefix_lengths, gen):
    """Feed ``ys`` (beam, 1 + max P) through ``batch_score`` one token at a time, from the start
    state of utterance ``x`` (T, D); return {P: states of the beam after <sos> + P tokens}.

    Between steps the hypotheses are reshuffled (each picks a random parent, as after beam
    pruning), so a state list is made of rows of different batches, as in the search."""
    beam = ys.shape[0]
    xs = x.expand(beam, *x.shape)  # what BatchBeamSearch.search hands the scorers
    states = [decoder.batch_init_state(x)] * beam
    wanted, out = set(prefix_lengths), {}
    for k in range(1, max(prefix_lengths) + 1):
        _, states = decoder.batch_score(ys[:, :k], states, xs)
        parents = torch.randint(0, beam, (beam,), generator=gen).tolist()
        states = [states[j] for j in parents]
        if k in wanted:
            out[k] = states
    return out


def _error(exc: BaseException) -> dict:
    import traceback

    print(f"ERROR: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return {"error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=12)}


def bench_step(decoders: dict, cfg: dict, device, amp: str, seed: int, on_section=None) -> dict:
    """Part (a): {name: {...}} with the times of one batch_score step after each prefix.  A
    decoder that fails gets {"error": ...} and the others still run."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg["frames"], cfg["d_model"], generator=gen).to(device)
    beam, vocab = cfg["beam"], cfg["vocab"]
    ys = torch.randint(1, vocab - 1, (beam, 1 + max(cfg["prefix_lengths"])), generator=gen)
    ys[:, 0] = cfg["sos"]
    ys = ys.to(device)
    xs = x.expand(beam, *x.shape)
    min_warmup_s = 1.0 if device.type == "cuda" else 0.0
    results = {}
    for name, (dec, _) in decoders.items():
        reset_peak(device)
        res = {"by_prefix": {}}
        try:
            with torch.no_grad(), amp_context(device, amp):
                init = time_interleaved({"init": lambda: dec.batch_init_state(x)}, device,
                                        max(5, cfg["repeats"] // 4), 1)["init"][0]
                res["init_state_ms"] = init
                res["init_state_median_ms"] = statistics.median(init)
                states = prefix_states(dec, x, ys, cfg["prefix_lengths"],
                                       torch.Generator().manual_seed(seed + 1))
                calls = {p: functools.partial(dec.batch_score, ys[:, :p + 1], states[p], xs)
                         for p in cfg["prefix_lengths"]}
                timed = time_interleaved(calls, device, cfg["repeats"], cfg["warmup"],
                                         min_warmup_s)
                for p, call in calls.items():
                    logp, _ = call()
                    times, wall = timed[p]
                    res["by_prefix"][str(p)] = dict(
                        ms=times, wall_ms=wall, **_summary(times),
                        median_wall_ms=statistics.median(wall),
                        scores_shape=list(logp.shape), scores_dtype=str(logp.dtype),
                        scores_finite=bool(torch.isfinite(logp).all()))
                del states, calls
        except Exception as exc:  # noqa: BLE001 - recorded, the other decoders still run
            res.update(_error(exc))
        res["peak_memory_mib"] = peak_mib(device)
        results[name] = res
        if "error" not in res:
            print(f"[step] {name}: " + ", ".join(
                f"P={p} {r['median_ms']:.3f} ms" for p, r in res["by_prefix"].items())
                + f"; start state {res['init_state_median_ms']:.3f} ms", flush=True)
        if on_section:
            on_section(results)
    return results


def _profile_each(decoders: dict, device, path: str, run) -> dict:
    """For each decoder, ``run(name, dec, profiled)`` returns (summary entry, table); it calls
    ``profiled(fn)`` to get torch.profiler's key averages of ``fn()``.  The tables go to
    ``path``; a decoder that fails gets its error and the others still run."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def profiled(fn):
        sync(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the profiler's notes on its own cycles
            with profile(activities=activities) as prof:
                fn()
                sync(device)
        return prof.key_averages()

    summary, tables = {}, []
    for name, (dec, _) in decoders.items():
        try:
            summary[name], table = run(name, dec, profiled)
            tables.append(table)
        except Exception as exc:  # noqa: BLE001
            summary[name] = _error(exc)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n\n".join(tables) + "\n")
    return summary


def profile_step(decoders: dict, cfg: dict, device, amp: str, seed: int, path: str,
                 steps: int = 5) -> dict:
    """torch.profiler over ``steps`` batch_score calls at the longest prefix, per decoder: a
    table per decoder into ``path``; returns {name: {launches_per_step, cpu_ms_per_step}}."""
    from torch.autograd import DeviceType

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(cfg["frames"], cfg["d_model"], generator=gen).to(device)
    beam, p = cfg["beam"], max(cfg["prefix_lengths"])
    ys = torch.randint(1, cfg["vocab"] - 1, (beam, 1 + p), generator=gen)
    ys[:, 0] = cfg["sos"]
    ys, xs = ys.to(device), x.expand(beam, *x.shape)

    def run(name, dec, profiled):
        with torch.no_grad(), amp_context(device, amp):
            states = prefix_states(dec, x, ys, [p], torch.Generator().manual_seed(seed))[p]
            for _ in range(3):
                dec.batch_score(ys, states, xs)
            events = profiled(lambda: [dec.batch_score(ys, states, xs) for _ in range(steps)])
        launches = sum(e.count for e in events
                       if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                    "cudaLaunchKernelExC", "cuLaunchKernelEx"))
        # kernels only: CPU ops carry their kernels' time too, summing both counts it twice
        device_us = sum(getattr(e, "self_device_time_total", None)
                        or getattr(e, "self_cuda_time_total", 0) or 0 for e in events
                        if e.device_type == DeviceType.CUDA)
        return ({"launches_per_step": launches / steps,
                 "cpu_ms_per_step": sum(e.self_cpu_time_total for e in events) / 1e3 / steps,
                 "gpu_ms_per_step": device_us / 1e3 / steps},
                f"=== {name}, P={p}, {steps} steps, amp {amp}\n"
                + events.table(sort_by="self_cpu_time_total", row_limit=30))

    return _profile_each(decoders, device, path, run)


# the methods a whole decode spends its time in: ESPnet's batch beam search and each scorer's
SEARCH_METHODS = ("batch_beam", "_batch_select", "_select_states", "merge_states", "score_full",
                  "score_partial", "post_process", "batchfy", "unbatchfy", "init_hyp")
SCORER_METHODS = ("batch_score", "batch_score_partial", "batch_init_state", "init_state",
                  "select_state", "batch_select_state", "extend_state", "extend_prob")


class Regions:
    """Instance-level wrappers that put each listed method of these objects in a
    torch.profiler region named Class.method (removed again by ``remove``)."""

    def __init__(self, objects_methods):
        from torch.profiler import record_function

        self.wrapped = []
        for obj, methods in objects_methods:
            for meth in methods:
                inner = getattr(obj, meth, None)
                if inner is None or meth in vars(obj):
                    continue
                label = f"{type(obj).__name__}.{meth}"

                def region(*args, _inner=inner, _label=label, **kwargs):
                    with record_function(_label):
                        return _inner(*args, **kwargs)

                setattr(obj, meth, region)
                self.wrapped.append((obj, meth))

    def remove(self):
        for obj, meth in self.wrapped:
            delattr(obj, meth)


def profile_decode(decoders: dict, cfg: dict, device, amp: str, seed: int, path: str,
                   steps: int = 40) -> dict:
    """torch.profiler over one whole decode of ``steps`` steps per decoder, the beam search's
    and the scorers' methods as named regions: where the time between two ``batch_score``
    calls goes.  A table per decoder into ``path``; returns {name: {region: cpu ms per step}}."""
    gen = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(cfg["frames"], cfg["d_model"], generator=gen).to(device)
    ctc = make_ctc(cfg, device, seed)

    def run(name, dec, profiled):
        search = make_beam_search(dec, ctc, cfg, device)
        with torch.no_grad(), amp_context(device, amp):
            decode_once(search, x, steps, device)  # warm-up (and the decoder's graphs)
            wrapped = Regions([(search, SEARCH_METHODS)]
                              + [(sc, SCORER_METHODS) for sc in search.scorers.values()])
            try:
                events = profiled(lambda: decode_once(search, x, steps, device))
            finally:
                wrapped.remove()
        regions = {}
        for e in events:  # a region is listed twice on CUDA (host, and its GPU annotation)
            if "." in e.key and e.key.split(".")[0][:1].isupper():
                regions[e.key] = max(regions.get(e.key, 0.0), e.cpu_time_total / 1e3 / steps)
        return regions, (f"=== {name}, whole decode of {steps} steps, amp {amp}\n"
                         + events.table(sort_by="cpu_time_total", row_limit=45))

    return _profile_each(decoders, device, path, run)


def step_ratios(step: dict, prefix_lengths) -> dict:
    lo, hi = str(min(prefix_lengths)), str(max(prefix_lengths))
    med = {n: {p: r["median_ms"] for p, r in res["by_prefix"].items()}
           for n, res in step.items() if "error" not in res}
    out = {"flatness": {n: m[hi] / m[lo] for n, m in med.items()},
           "flatness_definition": f"median ms at P={hi} / median ms at P={lo}"}
    if "transformer" in med:
        out["transformer_over"] = {n: {p: med["transformer"][p] / m[p] for p in m}
                                   for n, m in med.items() if n != "transformer"}
    checks = {}
    for n in (*OURS, *VARIANTS):
        if n not in med:
            continue
        c = {"flatness": out["flatness"][n],
             "flat_ok": out["flatness"][n] <= TARGETS["flatness_max"]}
        if "transformer_over" in out:
            speedup = min(out["transformer_over"][n].values())
            c.update(speedup_min_over_prefixes=speedup,
                     speedup_ok=speedup >= TARGETS["speedup_vs_transformer_min"])
        checks[n] = c
    out["targets"] = dict(TARGETS, results=checks)
    return out


# --- (b) whole decode -------------------------------------------------------------------------
class StepCounter:
    """Wraps a scorer's ``batch_score`` (instance attribute, signature kept) to count the
    decoding steps and the hypotheses scored at each."""

    def __init__(self, decoder):
        self.decoder, self.hyps = decoder, []
        inner = decoder.batch_score

        @functools.wraps(inner)
        def batch_score(ys, states, xs, *args, **kwargs):
            self.hyps.append(len(states))
            return inner(ys, states, xs, *args, **kwargs)

        decoder.batch_score = batch_score

    def remove(self):
        del self.decoder.batch_score


def make_ctc(cfg: dict, device, seed: int):
    torch.manual_seed(seed + 2)
    return CTC(cfg["vocab"], cfg["d_model"]).to(device).eval()


def make_beam_search(decoder, ctc, cfg: dict, device):
    weights = {"decoder": 1.0 - cfg["ctc_weight"], "ctc": cfg["ctc_weight"], "length_bonus": 0.0}
    scorers = {"decoder": decoder,
               "ctc": CTCPrefixScorer(ctc=ctc, eos=cfg["eos"],
                                      window_margin=cfg["ctc_window_margin"]),
               "length_bonus": LengthBonus(cfg["vocab"])}
    search = BatchBeamSearch(scorers=scorers, weights=weights, beam_size=cfg["beam"],
                             vocab_size=cfg["vocab"], sos=cfg["sos"], eos=cfg["eos"],
                             token_list=None, pre_beam_score_key="full")
    return search.to(device).eval()


def decode_once(search, x, steps: int, device):
    """One forced-length decode; returns (seconds, n-best list)."""
    sync(device)
    t0 = time.perf_counter()
    nbest = search(x=x, maxlenratio=-float(steps), minlenratio=-float(steps - 1))
    sync(device)
    return time.perf_counter() - t0, nbest


def bench_decode(decoders: dict, cfg: dict, device, amp: str, seed: int,
                 on_section=None) -> dict:
    """Part (b): {name: {...}} with whole-decode times and the real-time factor.  A decoder
    that fails gets {"error": ...} and the others still run.

    The decoders take turns, one decode each per round (the order rotating), so that host
    noise of the machine falls on all of them alike (on an H100 one decoder's 7 decodes in a
    row spread 3.8-4.8 s); each decoder's ratio to the Transformer is also taken per round."""
    gen = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(cfg["frames"], cfg["d_model"], generator=gen).to(device)
    ctc = make_ctc(cfg, device, seed)
    steps = cfg["decode_steps"]
    results, searches = {}, {}
    with torch.no_grad(), amp_context(device, amp):
        for name, (dec, _) in decoders.items():
            try:
                searches[name] = make_beam_search(dec, ctc, cfg, device)
                # warm-up: kernels compiled / autotuned, allocator primed
                decode_once(searches[name], x, min(steps, max(2, steps // 10)), device)
                results[name] = {"seconds": [], "peak_memory_mib": None}
            except Exception as exc:  # noqa: BLE001 - recorded, the other decoders still run
                results[name] = dict(_error(exc), peak_memory_mib=peak_mib(device))
                searches.pop(name, None)
        names = list(searches)
        for r in range(cfg["decode_repeats"]):
            # rotated each round, and reversed every other one: no decoder always follows the
            # same one
            order = names[r % max(1, len(names)):] + names[:r % max(1, len(names))]
            for name in order[::-1] if r % 2 else order:
                if "error" in results[name]:
                    continue
                res, dec = results[name], decoders[name][0]
                reset_peak(device)
                counter = StepCounter(dec)
                try:
                    sec, nbest = decode_once(searches[name], x, steps, device)
                except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                    results[name] = dict(_error(exc), peak_memory_mib=peak_mib(device))
                    continue
                finally:
                    counter.remove()
                res["seconds"].append(sec)
                peak = peak_mib(device)  # None off CUDA
                if peak is not None:
                    res["peak_memory_mib"] = max(res["peak_memory_mib"] or 0.0, peak)
                if "hyps_per_step" not in res:
                    best = nbest[0] if nbest else None
                    res.update(
                        hyps_per_step=counter.hyps, n_best=len(nbest),
                        best_tokens=None if best is None else int(len(best.yseq)) - 2,
                        best_score=None if best is None else float(best.score),
                        best_scores=None if best is None else
                        {k: float(v) for k, v in best.scores.items()},
                    )
            if on_section:  # the rounds so far are saved (a plan may be cut at its limit)
                on_section(results)
    for name in names:
        res = results[name]
        if "error" not in res:
            _finish(res, cfg)
            print(f"[decode] {name}: {res['median_s']:.3f} s for {res['steps_run']} steps "
                  f"(RTF {res['rtf']:.4f}, {res['ms_per_step']:.2f} ms/step, n-best "
                  f"{res['n_best']}, steps ok {res['steps_ok']})", flush=True)
    if on_section:
        on_section(results)
    return results


def _finish(res: dict, cfg: dict):
    """Medians and checks of one decoder's timed decodes."""
    steps, hyps_per_step = cfg["decode_steps"], res["hyps_per_step"]
    median = statistics.median(res["seconds"])
    res.update(
        median_s=median, rtf=median / cfg["seconds"],
        steps_requested=steps, steps_run=len(hyps_per_step),
        full_beam=all(h == cfg["beam"] for h in hyps_per_step[1:]),
        ms_per_step=median * 1e3 / max(1, len(hyps_per_step)),
    )
    res["steps_ok"] = (res["steps_run"] == steps and res["full_beam"]
                       and res["n_best"] > 0 and res["best_tokens"] == steps)


def decode_ratios(dec: dict) -> dict:
    """The Transformer's RTF over each decoder's (medians), and the median over rounds of the
    per-round ratio (the decodes of one round ran back to back)."""
    ok = {n: r for n, r in dec.items() if "error" not in r}
    if "transformer" not in ok:
        return {}
    ref = ok["transformer"]["seconds"]
    return {"transformer_rtf_over": {n: ok["transformer"]["rtf"] / r["rtf"]
                                     for n, r in ok.items() if n != "transformer"},
            "transformer_over_per_round_median": {
                n: statistics.median(a / b for a, b in zip(ref, r["seconds"]))
                for n, r in ok.items() if n != "transformer"}}


# --- report -----------------------------------------------------------------------------------
def _version(module: str):
    try:
        mod = __import__(module)
        return getattr(mod, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - any import failure is "not installed"
        return f"unavailable ({type(exc).__name__})"


def environment(device: torch.device) -> dict:
    import espnet

    env = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "espnet": getattr(espnet, "__version__", "?"),
        "espnet_mamba": _version("espnet_mamba"), "mamba_ssm": _version("mamba_ssm"),
        "causal_conv1d": _version("causal_conv1d"), "triton": _version("triton"),
        "flash_attn": _version("flash_attn"),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "kernels_available": {f: ops_backend.kernel_module(f) is not None
                              for f in ops_backend._KERNEL_MODULES},
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   capability=list(torch.cuda.get_device_capability(device)),
                   total_memory_gib=props.total_memory / 2 ** 30)
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def print_summary(result: dict):
    step = result.get("step") or {}
    if step:
        ps = result["settings"]["prefix_lengths"]
        print(f"\nbatch_score, one step, beam {result['settings']['beam']}, "
              f"{result['settings']['frames']} encoder frames (median ms):")
        print(f"  {'decoder':<14}{'params':>12}" + "".join(f"{'P=' + str(p):>10}" for p in ps)
              + f"{'start':>10}")
        for name, res in step.items():
            if "error" in res:
                print(f"  {name:<14}FAILED: {res['error']}")
                continue
            print(f"  {name:<14}{result['decoders'][name]['params']:>12,}"
                  + "".join(f"{res['by_prefix'][str(p)]['median_ms']:>10.3f}" for p in ps)
                  + f"{res['init_state_median_ms']:>10.3f}")
        ratios = result.get("step_ratios", {})
        for name, by_p in ratios.get("transformer_over", {}).items():
            print(f"  transformer / {name}: " + ", ".join(
                f"P={p} {v:.2f}x" for p, v in by_p.items()))
        for name, v in ratios.get("flatness", {}).items():
            print(f"  {name}: {ratios['flatness_definition']} = {v:.3f}")
    dec = result.get("decode") or {}
    if dec:
        s = result["settings"]
        print(f"\nwhole decode, {s['seconds']:g} s utterance, beam {s['beam']}, "
              f"{s['decode_steps']} steps, CTC window margin {s['ctc_window_margin']}:")
        for name, res in dec.items():
            if "error" in res:
                print(f"  {name:<14} FAILED: {res['error']}")
                continue
            print(f"  {name:<14} {res['median_s']:.3f} s  RTF {res['rtf']:.4f}  "
                  f"({res['ms_per_step']:.2f} ms/step, steps ok {res['steps_ok']})")
        ratios = result.get("decode_ratios", {})
        for name, v in ratios.get("transformer_rtf_over", {}).items():
            per_round = ratios["transformer_over_per_round_median"][name]
            print(f"  transformer RTF / {name} RTF: {v:.2f}x (median of per-round ratios "
                  f"{per_round:.2f}x)")


def plot(result: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    step = result["step"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in step.items():
        if "error" in res:
            continue
        ps = [int(p) for p in res["by_prefix"]]
        ax.plot(ps, [res["by_prefix"][str(p)]["median_ms"] for p in ps], marker="o",
                label=f"{name} ({result['decoders'][name]['params'] / 1e6:.1f} M)")
    s, env = result["settings"], result["environment"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(s["prefix_lengths"], [str(p) for p in s["prefix_lengths"]])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("prefix length (tokens)")
    ax.set_ylabel("ms per batch_score step (median)")
    ax.set_title(f"beam {s['beam']}, {s['seconds']:g} s utterance, {s['dtype']}, "
                 f"{env['device_name']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- main -------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU tests)")
    ap.add_argument("--amp", choices=["auto", "none", "bf16"], default="auto",
                    help="bf16 autocast; auto = bf16 on cuda, none (fp32) on cpu")
    ap.add_argument("--parts", default="step,decode", help="comma list of: step, decode")
    ap.add_argument("--decoders", default=",".join(DECODERS), help="comma list of decoders")
    ap.add_argument("--prefix-lengths", default=None,
                    help="comma list (default 10,20,40,80,160; tiny 2,4,8)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per step (>= 20)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--beam", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="utterance length (60)")
    ap.add_argument("--decode-steps", type=int, default=None, help="forced tokens (200)")
    ap.add_argument("--decode-repeats", type=int, default=None)
    ap.add_argument("--ctc-weight", type=float, default=0.3)
    ap.add_argument("--ctc-window-margin", type=int, default=100,
                    help="CTCPrefixScorer window_margin (Speech2Text default 100; 0 = exact)")
    ap.add_argument("--mixer", choices=["mamba", "mamba2"], default="mamba")
    ap.add_argument("--d-state", type=int, default=None)
    ap.add_argument("--samba-blocks", type=int, default=None, help="default: match params")
    ap.add_argument("--speech-mamba-blocks", type=int, default=None,
                    help="default: match params")
    ap.add_argument("--backend", choices=list(ops_backend.BACKENDS), default=None,
                    help="our decoders' backend (default: $ESPNET_MAMBA_BACKEND or auto)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file")
    ap.add_argument("--plot", default=None, help="PNG file: ms per step vs prefix length")
    ap.add_argument("--profile-decode", default=None,
                    help="text file: torch.profiler tables of one whole decode per decoder, "
                         "the beam search's and scorers' methods as named regions")
    ap.add_argument("--profile", default=None,
                    help="text file: torch.profiler tables of a few steps at the longest "
                         "prefix, per decoder (also: launches per step in the JSON)")
    return ap.parse_args(argv)


def settings_from_args(args) -> dict:
    cfg = dict(TINY if args.tiny else FULL)
    for key in ("repeats", "warmup", "beam", "vocab", "seconds", "decode_steps",
                "decode_repeats", "d_state"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.prefix_lengths:
        cfg["prefix_lengths"] = sorted({int(p) for p in args.prefix_lengths.split(",")})
    cfg["frames"] = int(round(cfg["seconds"] * FRAMES_PER_SECOND))
    cfg["sos"] = cfg["eos"] = cfg["vocab"] - 1  # ESPnet's convention; blank is 0
    cfg.update(mixer=args.mixer, ctc_weight=args.ctc_weight,
               ctc_window_margin=args.ctc_window_margin,
               ctc_windowed=args.ctc_window_margin > 0)
    if min(cfg["prefix_lengths"]) < 1 or cfg["decode_steps"] < 2:
        raise SystemExit("prefix lengths must be >= 1 and --decode-steps >= 2")
    return cfg


def graph_checks(decoders: dict) -> dict:
    """Each captured graph's first replay vs the eager step, (rows, logits, states) max rel.
    errors, and why graphs were switched off, per decoder that has any: JSON-ready (the checks
    are kept in a deque, which json cannot write)."""
    graphs = {n: {"checks": [list(c) for c in dec.step_graphs.checks],
                  "disabled": dec.step_graphs.disabled}
              for n, (dec, _) in decoders.items() if hasattr(dec, "step_graphs")}
    return {n: g for n, g in graphs.items() if g["checks"] or g["disabled"]}


def main(argv=None) -> dict:
    args = parse_args(argv)
    # the forced length makes BeamSearch warn "best hypo length == max output length" per decode
    for name in ("espnet2.legacy.nets.batch_beam_search", "espnet2.legacy.nets.beam_search",
                 "espnet.nets.batch_beam_search", "espnet.nets.beam_search"):
        logging.getLogger(name).setLevel(logging.ERROR)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False")
    amp = args.amp if args.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    cfg = settings_from_args(args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    names = [n.strip() for n in args.decoders.split(",") if n.strip()]
    bad = [p for p in parts if p not in ("step", "decode")] + [
        n for n in names if n not in DECODERS + VARIANTS]
    if bad:
        raise SystemExit(f"unknown part/decoder {bad}; parts: step, decode; "
                         f"decoders: {', '.join(DECODERS + VARIANTS)}")
    backend = ops_backend.check_backend(args.backend)
    env = environment(device)
    kernels = all(env["kernels_available"][f] for f in
                  ("selective_state_update", "causal_conv1d", "rms_norm"))
    ours_on_kernels = device.type == "cuda" and backend != "torch" and kernels
    if device.type == "cuda" and not ours_on_kernels:
        print(f"WARNING: our decoders run on the PyTorch path (backend {backend!r}, kernels "
              f"available: {env['kernels_available']})", file=sys.stderr)

    result = {
        "benchmark": "decode_gpu",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv] if argv is None else ["decode_gpu.py", *argv],
        "environment": env,
        "settings": dict(
            cfg, device=str(device), amp=amp,
            dtype="fp32 weights" + (", bf16 autocast" if amp == "bf16" else ", fp32 compute"),
            backend=backend, ours_on_cuda_kernels=ours_on_kernels, tiny=args.tiny,
            parts=parts, seed=args.seed,
            weights={"decoder": 1.0 - cfg["ctc_weight"], "ctc": cfg["ctc_weight"],
                     "length_bonus": 0.0},
            prefix_definition="the timed batch_score call gets ys = <sos> + P tokens (beam, "
                              "P + 1); the decoder state holds <sos> + P - 1 tokens",
            eos_suppression=f"output_layer.bias[eos] = {EOS_BIAS:g} in every decoder",
            forced_length="maxlenratio = -N, minlenratio = -(N - 1): N steps; eos before "
                          "minlen dropped by BeamSearch.post_process, appended at step N",
            beam_search=f"{BatchBeamSearch.__module__}.BatchBeamSearch, pre_beam_score_key "
                        "'full', one utterance (T, D)",
            ctc_scorer=f"{CTCPrefixScorer.__module__}.CTCPrefixScorer(window_margin="
                       f"{cfg['ctc_window_margin']}) -> CTCPrefixScoreTH "
                       + ("(windowed)" if cfg["ctc_window_margin"] > 0 else "(exact)"),
        ),
    }

    t_start = time.perf_counter()

    def save(*_):
        result["elapsed_s"] = time.perf_counter() - t_start
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(args.out) + ".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(args.out)

    blocks = {"samba_asr": args.samba_blocks, "speech_mamba": args.speech_mamba_blocks}
    blocks.update({f"{n}_eager": blocks[n] for n in OURS})
    decoders = build_decoders(cfg, names, device, args.backend, args.seed, blocks)
    result["decoders"] = {n: info for n, (_, info) in decoders.items()}
    for n, info in result["decoders"].items():
        c = info["config"]
        print(f"{n}: {info['params']:,} parameters, {c['num_blocks']} blocks, "
              f"d_model {c['encoder_output_size']}", flush=True)
    save()

    for part, bench, ratios in (
            ("step", bench_step, lambda r: step_ratios(r, cfg["prefix_lengths"])),
            ("decode", bench_decode, decode_ratios)):
        if part not in parts:
            continue
        result[part] = {}

        def on_section(res, part=part):  # partial results are saved as each decoder finishes
            result[part] = res
            save()

        bench(decoders, cfg, device, amp, args.seed, on_section)
        result[f"{part}_ratios"] = ratios(result[part])
        save()
    if args.profile:
        result["profile"] = profile_step(decoders, cfg, device, amp, args.seed, args.profile)
        result["profile_file"] = args.profile
    if args.profile_decode:
        result["profile_decode"] = profile_decode(decoders, cfg, device, amp, args.seed,
                                                  args.profile_decode,
                                                  min(40, cfg["decode_steps"]))
        result["profile_decode_file"] = args.profile_decode
    graphs = graph_checks(decoders)
    if graphs:
        result["graph_checks"] = graphs
    result["errors"] = sorted(f"{part}/{n}" for part in ("step", "decode")
                              for n, r in (result.get(part) or {}).items() if "error" in r)
    result["finished"] = True
    save()
    print_summary(result)
    if args.plot and result.get("step"):
        if plot(result, args.plot):
            print(f"plot: {args.plot}")
    if args.out:
        print(f"results: {args.out}")
    if result["errors"]:
        print(f"FAILED parts: {', '.join(result['errors'])} (see 'error' in the JSON)")
    print(f"total {result['elapsed_s']:.1f} s")
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
