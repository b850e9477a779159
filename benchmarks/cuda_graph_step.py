"""CUDA graphs for the recurrent decoders' ``step`` (an experiment of issue 6, not yet part of
the package): benchmarks/decode_gpu.py's ``samba_asr_graphed`` decoder is samba_asr with its
``step`` replaced by :class:`GraphedStep`.

Why: one decoding step of the 13-layer samba_asr decoder is ~0.6 ms of GPU work and ~13 ms of
host work on the H100 (docs/benchmarks.md, session 3): every small kernel costs its launch.  A
step has fixed shapes for a given number of hypotheses (the state does not grow), so it can be
captured once per (rows, dtypes, autocast) and replayed: one launch, plus copying the tokens and
states into the graph's input buffers and cloning its outputs.  mamba-ssm's own generation
captures its decoding step the same way.

Only steps without speech memory are graphed (samba_asr's decoder reads the speech once, in
``start_state``); other calls, and anything off CUDA, run the eager step.  The first replay of
every captured graph is compared with the eager step on the same inputs: a mismatch raises
instead of timing a wrong computation.
"""

from __future__ import annotations

import torch

from espnet_mamba.modules.state import map_state


def _leaves(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _leaves(s)]


def _max_rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-30)).item()


class GraphedStep:
    def __init__(self, decoder, warmup: int = 3, check_rtol: float = 1e-3):
        self.eager = decoder.step  # the bound method, before it is replaced by this object
        self.warmup, self.check_rtol = warmup, check_rtol
        self.graphs = {}
        self.checks = []  # (key, max rel. error of logits, of states) of each first replay

    def __call__(self, tokens, recurrent, memory):
        if memory is not None or not tokens.is_cuda:
            return self.eager(tokens, recurrent, memory)
        autocast = torch.is_autocast_enabled("cuda")
        key = (tokens.shape[0], tuple((tuple(t.shape), t.dtype) for t in _leaves(recurrent)),
               autocast, torch.get_autocast_dtype("cuda") if autocast else None)
        entry = self.graphs.get(key)
        first = entry is None
        if first:
            entry = self.graphs[key] = self._capture(tokens, recurrent)
        graph, in_tokens, in_state, out_logits, out_state = entry
        in_tokens.copy_(tokens)
        for dst, src in zip(_leaves(in_state), _leaves(recurrent)):
            dst.copy_(src)
        graph.replay()
        logits = out_logits.clone()
        state = map_state(torch.Tensor.clone, out_state)
        if first:
            self._check(key, tokens, recurrent, logits, state)
        return logits, state

    def _capture(self, tokens, recurrent):
        in_tokens = tokens.clone()
        in_state = map_state(torch.Tensor.clone, recurrent)
        # the autocast weight cache must not outlive the capture (torch's CUDA-graph notes)
        dtype = torch.get_autocast_dtype("cuda")
        ctx = (torch.autocast("cuda", dtype=dtype, cache_enabled=False)
               if torch.is_autocast_enabled("cuda") else torch.autocast("cuda", enabled=False))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), ctx, torch.cuda.stream(side):
            for _ in range(self.warmup):  # lazy inits and triton autotuning happen here
                self.eager(in_tokens, in_state, None)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), ctx, torch.cuda.graph(graph):
            out_logits, out_state = self.eager(in_tokens, in_state, None)
        return graph, in_tokens, in_state, out_logits, out_state

    def _check(self, key, tokens, recurrent, logits, state):
        with torch.no_grad():
            ref_logits, ref_state = self.eager(tokens, recurrent, None)
        err = (_max_rel(logits, ref_logits),
               max(_max_rel(a, b) for a, b in zip(_leaves(state), _leaves(ref_state))))
        self.checks.append((key[0], *err))
        if max(err) > self.check_rtol:
            raise RuntimeError(f"CUDA-graph step differs from the eager step for {key[0]} rows: "
                               f"logits {err[0]:.2e}, states {err[1]:.2e} (rtol {self.check_rtol})")
