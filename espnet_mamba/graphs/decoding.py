"""CUDA graphs of a recurrent decoder's one-token ``step`` during beam search.

Why: one eager decoding step of a 13-layer samba_asr decoder (beam 10, d 512) is ~0.6 ms of GPU
work and ~9 ms of host work on an H100: every small kernel costs its launch (graphed vs eager
step: docs/performance.md, "Decoding").  A step has fixed shapes for a given number of
hypotheses, because the recurrent state does not grow with the prefix, so it can be captured
once per shape and replayed as one launch (plus copying the tokens and states into the graph's
input buffers and cloning its outputs).
mamba-ssm's own generation captures its decoding step the same way.

When a graph is used (everything else runs the eager step, unchanged):
  * CUDA tensors, gradients off (``torch.no_grad``/``inference_mode``, as in ESPnet's
    ``Speech2Text``), the decoder in eval mode, not already inside a capture or a trace;
  * the speech memory, if the decoder has one (speech_mamba's cross-attention keys/values), is
    one object that later steps get again: one utterance's, shared by its hypotheses, or the
    stack of several utterances' memories that ``SpeechMemory.stack`` keeps for them
    (BatchBeamSearch over a batch); the graph reads it in place, and the graphs of a memory are
    dropped when another memory arrives (only a weak reference to it is kept, so decoding does
    not hold a finished utterance's memory);
  * the decoder's execution option ``cuda_graphs`` is true (its default; checked by
    ``RecurrentDecoder`` before it calls this).
A shape (rows, ...) is captured the second time it is seen: ESPnet's beam search keeps the
number of hypotheses fixed for most steps, and a count seen once is not worth a capture.
The first replay of every graph is compared with the eager step on the same inputs; if they
differ, NaN/inf included (or capturing fails), a warning names it, the eager result is returned
and graphs stay off for that decoder: never a silently different result.  Graphs are per CUDA
stream and a lock keeps one thread's copy-in/replay/copy-out from interleaving with another's;
``RecurrentDecoder`` drops them when its parameters move (``.to()``, ``.half()``) or are
replaced (checked once per utterance).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import warnings
import weakref

import torch

from espnet_mamba.graphs.capture import (TURN_OFF, parameter_signature,
                                          recover_from_failed_capture)
from espnet_mamba.modules.state import map_state

def _leaves(state):
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for s in state for t in _leaves(s)]


def _max_rel(a, b) -> float:
    """Max relative error of a vs b; inf where their NaN/inf positions differ."""
    a, b = a.float(), b.float()
    finite = b.isfinite()
    if not torch.equal(a.isfinite(), finite) or not torch.equal(a[~finite].nan_to_num(),
                                                                  b[~finite].nan_to_num()):
        return math.inf
    a, b = a[finite], b[finite]
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


class StepGraphs:
    """The captured graphs of one decoder, keyed by (rows, state layout, autocast, memory)."""

    def __init__(self, warmup: int = 3, check_rtol: float = 1e-3):
        self.warmup, self.check_rtol = warmup, check_rtol
        self.graphs = {}
        self.seen = set()  # keys seen once, not yet captured
        self.memory_ref = None  # weak reference to the memory the memory graphs read
        # (rows, max rel. error of the logits, of the states) of the latest first replays
        self.checks = collections.deque(maxlen=256)
        self.disabled = None  # why graphs were switched off for this decoder, if they were
        self.signature = None  # parameter_signature of the module the graphs were captured for
        self.lock = threading.Lock()

    # a copy of a decoder (copy.deepcopy, pickling) starts without graphs: they hold pointers
    # into the original's memory
    def __deepcopy__(self, memo):
        return StepGraphs(self.warmup, self.check_rtol)

    def __getstate__(self):  # no graphs, no lock
        return {"warmup": self.warmup, "check_rtol": self.check_rtol}

    def __setstate__(self, state):
        self.__init__(**state)

    def clear(self):
        self.graphs.clear()
        self.seen.clear()
        self.memory_ref = None

    def follow(self, module: torch.nn.Module):
        """Drop the graphs if ``module``'s parameters were replaced since they were captured
        (e.g. ``load_state_dict(assign=True)``).  Called once per utterance."""
        signature = parameter_signature(module)
        if signature != self.signature:
            self.clear()
            self.signature = signature

    def usable(self, tokens: torch.Tensor, training: bool) -> bool:
        return (self.disabled is None and tokens.is_cuda and not training
                and not torch.is_grad_enabled()
                and not torch.cuda.is_current_stream_capturing()
                and not torch.jit.is_tracing() and not torch.jit.is_scripting())

    def __call__(self, step, tokens, recurrent, memory):
        """``step(tokens, recurrent, memory)`` through a graph: (logits, new recurrent)."""
        with self.lock:
            return self._call(step, tokens, recurrent, memory)

    def _call(self, step, tokens, recurrent, memory):
        if memory is not None and (self.memory_ref is None or self.memory_ref() is not memory):
            # a new utterance: the graphs that read the old memory go
            self.graphs = {k: v for k, v in self.graphs.items() if not k[-1]}
            self.seen = {k for k in self.seen if not k[-1]}
            self.memory_ref = weakref.ref(memory)
        autocast = torch.is_autocast_enabled("cuda")
        stream = torch.cuda.current_stream(tokens.device).cuda_stream if tokens.is_cuda else None
        key = (tokens.shape[0], tokens.device, stream, torch.is_inference_mode_enabled(),
               tuple((tuple(t.shape), t.dtype) for t in _leaves(recurrent)),
               torch.get_autocast_dtype("cuda") if autocast else None, memory is not None)
        entry = self.graphs.get(key)
        first = entry is None
        if first:
            if key not in self.seen:  # first sighting: eager (see the module docstring)
                self.seen.add(key)
                return step(tokens, recurrent, memory)
            stream = torch.cuda.current_stream(tokens.device) if tokens.is_cuda else None
            try:
                entry = self._capture(step, tokens, recurrent, memory)
            except RuntimeError as err:  # an op that cannot be captured: stay eager
                try:
                    self.recover(tokens.device, stream)
                except Exception as recover_err:
                    raise RuntimeError(
                        f"espnet_mamba: capturing the decoding step failed ({err}) and CUDA's "
                        f"random-number generator could not be restored afterwards "
                        f"({recover_err}); this process cannot go on decoding. Set {TURN_OFF} "
                        f"(or decoder_conf cuda_graphs: false)") from err
                return self._give_up(step, tokens, recurrent, memory,
                                     f"capturing the decoding step failed: {err}")
            self.graphs[key] = entry
        graph, in_tokens, in_state, out_logits, out_state = entry
        in_tokens.copy_(tokens)
        for dst, src in zip(_leaves(in_state), _leaves(recurrent)):
            dst.copy_(src)
        graph.replay()
        logits = out_logits.clone()
        state = map_state(torch.Tensor.clone, out_state)
        if first:
            ref_logits, ref_state = step(tokens, recurrent, memory)
            err = (_max_rel(logits, ref_logits),
                   max((_max_rel(a, b) for a, b in zip(_leaves(state), _leaves(ref_state))),
                       default=0.0))
            self.checks.append((key[0], *err))
            if not max(err) <= self.check_rtol:
                return self._give_up(
                    step, tokens, recurrent, memory,
                    f"the CUDA-graph step differs from the eager step for {key[0]} rows (max "
                    f"rel. error: logits {err[0]:.2e}, states {err[1]:.2e}, rtol "
                    f"{self.check_rtol})", (ref_logits, ref_state))
        return logits, state

    # CPU tests replace this (there is no CUDA state to undo there)
    recover = staticmethod(recover_from_failed_capture)

    def _capture(self, step, tokens, recurrent, memory):
        in_tokens = tokens.clone()
        in_state = map_state(torch.Tensor.clone, recurrent)
        # autocast's weight cache must not outlive the capture (torch's CUDA-graph notes)
        ctx = (torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"),
                              cache_enabled=False)
               if torch.is_autocast_enabled("cuda") else torch.autocast("cuda", enabled=False))
        side = torch.cuda.Stream(tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        # lazy initialisation and triton autotuning happen in the first warm-up steps; later
        # captures need one (the eager steps before them ran the same kernels)
        warmup = 1 if self.checks else self.warmup
        with ctx, torch.cuda.stream(side):
            for _ in range(warmup):
                step(in_tokens, in_state, memory)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads do not break this capture
        with ctx, torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out_logits, out_state = step(in_tokens, in_state, memory)
        return graph, in_tokens, in_state, out_logits, out_state

    def _give_up(self, step, tokens, recurrent, memory, why, result=None):
        self.clear()  # frees the graphs' memory pools
        self.disabled = why
        warnings.warn(f"espnet_mamba: {why}; decoding goes on without CUDA graphs "
                      f"({TURN_OFF} skips them)", RuntimeWarning, stacklevel=3)
        logging.warning("espnet_mamba: %s; CUDA graphs off for this decoder", why)
        return result if result is not None else step(tokens, recurrent, memory)
