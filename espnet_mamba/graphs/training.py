"""CUDA graphs of an encoder's layer stack for training steps (forward and backward).

Why: below ~60 s of audio a training step of our encoders is bound by host work, not by the
GPU: 22 bidirectional blocks launch a few thousand small kernels, and mamba-ssm's Python-level
``mamba_inner_fn`` costs ~3.6 ms of host time per mixer (forward and backward, H100).
``torch.cuda.make_graphed_callables`` captures the layers' forward and backward for one input
shape and replays each as one launch.  On an H100 this option takes samba_asr's B8 15 s training
step from 178 ms eagerly to 52 ms with v1 mixers and 31 ms with Mamba2 mixers, against 90-98 ms
for ESPnet's Conformer with SDPA (docs/performance.md).

How ESPnet's varying batches get fixed shapes: the subsampled frames are padded up to a multiple
of ``frame_step`` (padding never changes a valid frame's result: the encoders' padding
invariance, tests/encoders/test_encoder_padding.py, fp32; under bf16 autocast the padded shapes round differently, 0.3-0.7 % of the output
on the CPU, as any other batch shape would) and the output is cut back, so one graph serves
every batch of that size whose length falls in the bucket.  ``batch_step`` > 1 also pads the
batch up to a multiple of it with one-frame rows: ``batch_type: numel``/``length`` vary the
batch size, and so do ``folded`` batches (smaller for long utterances, and the last one).  A
shape is captured the second time it is seen, up to ``max_shapes`` graphs.  All of them share
one memory pool for their activations, which is safe as long as one graph's forward is followed
by its backward before any graph runs again (enforced below); each graph also keeps its own
gradient buffer for every parameter (82M fp32 parameters x 4 bytes = 0.33 GB per shape,
computed, not measured), hence the limit.

When a graph is used (anything else runs the layers eagerly, unchanged):
  * CUDA tensors, the module in training mode, gradients on, not inside another capture;
  * gradient accumulation (``accum_grad`` > 1) replays too.  The gradients a graph returns
    live in its static buffers, and autograd stores them as ``.grad`` without a copy: the next
    replay of that graph (or of another one of the stack, which shares its memory pool) would
    overwrite them.  So before a replay, gradients that may be graph buffers (any ``.grad`` this
    stack has not copied itself) are copied out once; the copies are then added to in place
    by autograd, so an optimizer step with N micro-batches copies the gradients once, after
    its first (ESPnet's trainer sets ``.grad`` to None after each step);
  * each forward is followed by its backward: while the autograd node of a replay is alive and
    its backward has not run (two encoder passes in one loss), further calls run eagerly;
  * not in distributed training (DDP's gradient hooks are not yet checked with graphs), not in
    an ``nn.DataParallel`` replica (its weights are copies a graph would freeze in), no module
    hooks (a graph runs them only at capture);
  * the encoder's execution option ``cuda_graphs`` is true (checked by the encoder).
A setup that rules graphs out for good (off CUDA, DDP, DataParallel, hooks) logs one
warning naming the reason; validation runs eagerly without a word.
Under autocast, the graphed call runs inside ``torch.autocast(..., cache_enabled=False)``, as
``make_graphed_callables`` requires (ESPnet's trainer enables the cache); the cast weights are
the same, only not cached.  The graphs are dropped when the parameters move or are replaced
(``.to()``, ``load_state_dict(assign=True)``), change ``requires_grad``, or a sub-module's
training flag or dropout rate changes.  The output is a copy of the graph's buffer; the
parameters' ``.grad`` are graph buffers until the next ``zero_grad`` (a replay of any graph of
the stack may write them afterwards: do not keep ``.grad`` across steps).

The capture differentiates stand-ins of the parameters (fresh leaves sharing their memory,
``_ParametersAsInputs``), not the parameters: a parameter's gradient accumulator left from an
eager step on the default stream breaks a backward capture while that step's graph is alive.
Captures run in CUDA's ``thread_local`` capture mode (torch's default, ``global``, lets CUDA calls
of any other thread, e.g. a DataLoader's pin-memory thread, invalidate the capture).  A failed
capture leaves the thread on the capture's stream and CUDA's random-number generator in capture
mode (torch raises before restoring either), and every later random op of the process fails with
"Offset increment outside graph capture" (seen on an H100).  So after a failure
``capture.recover_from_failed_capture`` puts both right (checked on an H100 with a forced
failure: tests/gpu/test_graphed_encoder_cuda.py), the failure is logged once and the graphs are off for this stack from then on (it runs eagerly, unchanged);
if the process cannot be put right, a RuntimeError says so and how to turn the option off.  Out
of memory during a capture is raised, as it would be eagerly, without turning the graphs off.
Each capture is logged (INFO: ESPnet's train.log).  Not checked: whether a failed capture also
leaves the graphs' memory pool reserved.

``cuda_graph_conf`` (encoder_conf) sets ``frame_step`` (64 subsampled frames, 2.56 s at 40 ms),
``batch_step`` (1), ``max_shapes`` (8) and ``warmup``, the eager runs before a capture (3).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import weakref
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from espnet_mamba.graphs.capture import (TURN_OFF, parameter_signature,
                                          recover_from_failed_capture)
from espnet_mamba.modules.packing import RowPacking

OPTIONS = {"frame_step": 64, "batch_step": 1, "max_shapes": 8, "warmup": 3}
# why_eager reasons that are part of normal training (validation, two passes in one loss): not
# logged
ROUTINE = ("not a training step", "an earlier replay's backward")


class TrainingGraphs:
    """The captured training-step graphs of one layer stack, keyed by bucketed input shape."""

    # CPU tests put a stand-in capture here (and add "cpu" to ``devices``)
    make_graphed = staticmethod(torch.cuda.make_graphed_callables)
    devices = ("cuda",)

    def __init__(self, frame_step: int = OPTIONS["frame_step"],
                 batch_step: int = OPTIONS["batch_step"],
                 max_shapes: int = OPTIONS["max_shapes"], warmup: int = OPTIONS["warmup"]):
        for name, value, least in (("frame_step", frame_step, 1), ("batch_step", batch_step, 1),
                                   ("max_shapes", max_shapes, 1), ("warmup", warmup, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"cuda_graph_conf: {name} must be an integer >= {least}, "
                                 f"got {value!r}")
        self.frame_step, self.batch_step = frame_step, batch_step
        self.max_shapes, self.warmup = max_shapes, warmup
        # why a failed capture turned the graphs off for good (kept by clear()), or None
        self.disabled = None
        self._reset()

    def _reset_graphs(self):
        self.graphs = {}  # key -> graphed callable
        self.seen = set()  # keys seen once, not captured yet
        self.pool = None  # one memory pool for every graph of this stack
        # (weak reference to the autograd node of the latest replay, {"done": backward ran}):
        # while that node lives and its backward has not run, the graphs' memory is in use
        self.pending = None

    def _reset(self):
        self._reset_graphs()
        self.signature = None  # the parameters the graphs were captured for
        self.captures = 0
        # id(tensor) -> weak reference of the gradients this stack copied out of graph buffers
        self.own_grads = {}
        self.grad_copies = 0  # how many times a replay had to copy gradients out first
        self.capture_error = None  # the first failed capture, if one failed
        self.full_warned = False
        self.warned = set()  # fallback reasons already logged

    # a copy of the model (copy.deepcopy, pickling) starts without graphs: they hold pointers
    # into the original's memory
    def __deepcopy__(self, memo):
        return TrainingGraphs(**self.__getstate__())

    def __getstate__(self):
        return {"frame_step": self.frame_step, "batch_step": self.batch_step,
                "max_shapes": self.max_shapes, "warmup": self.warmup}

    def __setstate__(self, state):
        self.__init__(**state)

    def clear(self):
        """Drop every graph and its memory (e.g. before a different workload)."""
        self._reset()

    def why_eager(self, module: torch.nn.Module, xs: torch.Tensor,
                  tree: Optional["_Tree"] = None) -> Optional[str]:
        """Why this call cannot replay a graph (None: it can).  ``tree``: ``_Tree(module)``,
        if the caller has it already."""
        if xs.device.type not in self.devices:
            return "not on CUDA"
        if self.disabled is not None:
            return self.disabled
        if not (module.training and torch.is_grad_enabled()):
            return "not a training step"
        if xs.is_cuda and torch.cuda.is_current_stream_capturing():
            return "inside another capture"
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return "distributed training"
        if getattr(module, "_is_replica", False):
            # nn.DataParallel (ESPnet's --ngpu > 1 without DDP): a replica's weights are
            # broadcast copies, not parameters; a graph would freeze them in
            return "a DataParallel replica"
        tree = tree or _Tree(module)
        if not any(p.requires_grad for p in tree.params):
            return "no trainable parameters"
        if self.pending is not None:
            node, record = self.pending
            if node() is not None and not record["done"]:
                # a second forward before the first one's backward (two encoder passes in one
                # loss): a replay would overwrite the first one's saved activations
                return "an earlier replay's backward has not run"
        if tree.has_hooks():
            return "module hooks (a graph would run them only at capture)"
        return None

    def bucket(self, frames: int, batch: int) -> tuple:
        """(frames, rows) of the graph that serves a (batch, frames) input."""
        return (math.ceil(frames / self.frame_step) * self.frame_step,
                math.ceil(batch / self.batch_step) * self.batch_step)

    def __call__(self, module: torch.nn.Module, make_layers: Callable[[], torch.nn.Module],
                 xs: torch.Tensor, lengths: torch.Tensor, valid: torch.Tensor
                 ) -> Optional[torch.Tensor]:
        """The layers' output for (xs, lengths, valid) replayed from a graph, or None: the
        caller runs the layers eagerly.

        ``make_layers()`` returns a fresh module running the layers on (xs, lengths, valid)
        (captured through ``torch.func.functional_call``); ``module`` owns their parameters."""
        shape = self.bucket(xs.shape[1], xs.shape[0])
        return self._run(module, make_layers, xs, "padded", shape,
                         lambda key, x: self._padded(key, x, lengths, valid))

    def packed(self, module: torch.nn.Module, make_layers: Callable[[], torch.nn.Module],
               xs: torch.Tensor, row: RowPacking,
               layout: str = "packed") -> Optional[torch.Tensor]:
        """The same for a packed row xs (1, total, d) (``pack_sequences``): the graph's inputs
        are (xs, seq_idx, reverse_index), padded to a multiple of ``frame_step`` with one more
        utterance of zero frames (``batch_step`` does not apply); ``make_layers()`` runs the
        layers on them.  ``layout`` names how the layers run the row (part of the graph's
        key)."""
        def pad(key, x):
            frames = key[0]
            padded_row = row.pad_to(frames)
            return (F.pad(x, (0, 0, 0, frames - x.shape[1])), padded_row.seq_idx,
                    padded_row.reverse_index)
        shape = (self.bucket(xs.shape[1], 1)[0], 1)
        return self._run(module, make_layers, xs, layout, shape, pad)

    def _run(self, module, make_layers, xs, layout, shape, pad):
        """``shape``: the graph's (frames, rows); ``pad(key, xs)``: its inputs."""
        # one walk over the module tree serves every check of this step (a 23-block encoder
        # walked once per check: ~3.5 ms of host time per step on a 2-core CPU, one walk
        # ~0.9 ms; the GPU waits for it when its work is short, as with packed batches)
        tree = _Tree(module) if xs.device.type in self.devices else None
        reason = self.why_eager(module, xs, tree)
        if reason is not None:
            if not reason.startswith(ROUTINE) and reason not in self.warned:
                # asked for graphs that this setup never uses: say so once, not per step
                logging.warning("encoder cuda_graphs: running eagerly (%s)", reason)
                self.warned.add(reason)
            return None
        signature = tree.signature()
        if signature != self.signature:
            self._reset()
            self.signature = signature
        batch, frames = xs.shape[:2]
        autocast = torch.is_autocast_enabled(xs.device.type)
        key = (*shape, layout, xs.dtype, xs.requires_grad, xs.device,
               torch.get_autocast_dtype(xs.device.type) if autocast else None)
        graphed = self._graphed(key, make_layers, xs, pad)
        if graphed is None:
            return None
        self._own_gradients(tree)
        if autocast:
            with torch.autocast(xs.device.type, dtype=key[-1], cache_enabled=False):
                out = graphed(*pad(key, xs))
        else:
            out = graphed(*pad(key, xs))
        if out.grad_fn is not None:
            record = {"done": False}
            out.grad_fn.register_hook(lambda *_: record.__setitem__("done", True))
            self.pending = (weakref.ref(out.grad_fn), record)
        # a copy: the graph's output buffer, and memory another graph's replay writes, would
        # change under a caller that keeps the output beyond this training step
        return out[:batch, :frames].clone()

    def _own_gradients(self, tree: "_Tree"):
        """Before a replay: every ``.grad`` that may be a graph's buffer (one this stack did not
        copy itself) replaced by a copy, which autograd then adds the replay's gradient to."""
        copied = False
        for p in tree.params:
            g = p.grad
            if g is None:
                continue
            ref = self.own_grads.get(id(g))
            if ref is not None and ref() is g:
                continue
            p.grad = g.clone()
            self.own_grads[id(p.grad)] = weakref.ref(p.grad)
            copied = True
        if copied:
            self.grad_copies += 1
            # drop entries of gradients gone since (set to None by zero_grad)
            self.own_grads = {k: r for k, r in self.own_grads.items() if r() is not None}

    def _failed(self, key, device, stream, err: Exception):
        """After a failed capture: the stream and the random-number generator put right, and
        the graphs off for good, unless it ran out of memory (raised by the caller, as it would
        be eagerly; a later capture may fit)."""
        what = f"{type(err).__name__}: {err}"
        self.capture_error = self.capture_error or what
        self._reset_graphs()
        oom = isinstance(err, torch.cuda.OutOfMemoryError)
        if not oom:
            self.disabled = f"capturing shape {key[:2]} failed ({what.splitlines()[0]})"
        try:
            self.recover(device, stream)
        except Exception as recover_err:
            raise RuntimeError(
                f"encoder cuda_graphs: capturing the layers for shape {key[:2]} failed ({what}) "
                f"and CUDA's random-number generator could not be restored afterwards "
                f"({type(recover_err).__name__}: {recover_err}); this process cannot go on. "
                f"Set encoder_conf cuda_graphs: false (or {TURN_OFF}) and resume") from err
        if not oom:
            # with the traceback: a capture error often surfaces at a later op than the one
            # that broke the capture ("operation failed due to a previous error during capture")
            logging.warning("encoder cuda_graphs: %s; the layers run eagerly from now on",
                            self.disabled, exc_info=err)
            self.warned.add(self.disabled)  # said here, not again per step

    # CPU tests replace this (graphs/decoding.py: what a failed capture leaves behind)
    recover = staticmethod(recover_from_failed_capture)

    @staticmethod
    def _padded(key, xs, lengths, valid):
        """The input padded to the graph's shape: frames beyond the batch's length are padding,
        as in any padded batch; added rows are one-frame utterances of zeros, whose outputs are
        cut off (so they get no gradient) and which no layer mixes with the real rows."""
        frames, rows = key[:2]
        extra = rows - xs.shape[0]
        xs = F.pad(xs, (0, 0, 0, frames - xs.shape[1], 0, extra))
        valid = F.pad(valid, (0, frames - valid.shape[1], 0, extra))
        if extra:
            valid[-extra:, 0] = True
            lengths = torch.cat([lengths, lengths.new_ones(extra)])
        return xs, lengths, valid

    def _graphed(self, key, make_layers, xs, pad):
        if key in self.graphs:
            return self.graphs[key]
        if key not in self.seen:  # a shape seen once is not worth a capture
            self.seen.add(key)
            return None
        if len(self.graphs) >= self.max_shapes:
            if not self.full_warned:
                logging.warning("encoder CUDA graphs: %d shapes captured (cuda_graph_conf "
                                "max_shapes); new shapes run eagerly", self.max_shapes)
                self.full_warned = True
            return None
        self.seen.discard(key)
        xs_p, *rest = pad(key, xs.detach())
        sample = (xs_p.clone().requires_grad_(xs.requires_grad), *(t.clone() for t in rest))
        if self.pool is None and xs.is_cuda:
            self.pool = torch.cuda.graph_pool_handle()
        autocast = key[-1] is not None
        stream = torch.cuda.current_stream(xs.device) if xs.is_cuda else None
        layers = _ParametersAsInputs(make_layers(), len(sample))
        try:
            with torch.autocast(xs.device.type, dtype=key[-1] or torch.float32,
                                enabled=autocast, cache_enabled=False), _thread_local_capture():
                replay = self.make_graphed(layers, sample + layers.stand_ins(),
                                           num_warmup_iters=self.warmup, pool=self.pool)
            self.captures += 1
        except Exception as err:
            self._failed(key, xs.device, stream, err)
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            return None
        logging.info("encoder cuda_graphs: captured shape %s of a %s batch (%d of at most %d)",
                     key[:2], key[2], len(self.graphs) + 1, self.max_shapes)
        params = layers.params
        self.graphs[key] = graphed = lambda *inputs: replay(*inputs, *params)
        return graphed


class _ParametersAsInputs:
    """The layers as a function of (inputs..., parameters...), for the capture: it then
    differentiates fresh leaf tensors that share the parameters' memory (``stand_ins``) instead
    of the parameters, and a replay is given the parameters themselves in their place (same
    memory: nothing is copied) and returns their gradients.

    Why: autograd makes a leaf's gradient wait on the stream where the leaf's gradient
    accumulator was made.  A parameter's accumulator made by an eager training step on the
    default (legacy) stream lives as long as any graph of that step is referenced (a loss the
    caller keeps, a reference cycle the collector has not freed yet), and while it lives the
    backward capture fails with "operation would make the legacy stream depend on a capturing
    blocking stream" (H100, torch 2.11: every process of tools/gpu/repeat_captures.py, which
    keeps the previous step's output).  The stand-ins' accumulators are made inside the capture's
    own warm-up, as the parameters' are when nothing from before is alive."""

    def __init__(self, layers: torch.nn.Module, n_inputs: int):
        named = list(layers.named_parameters())  # shared parameters once
        self.layers, self.n_inputs = layers, n_inputs
        self.names = [n for n, _ in named]
        self.params = tuple(p for _, p in named)

    def stand_ins(self) -> tuple:
        return tuple(p.detach().requires_grad_(p.requires_grad) for p in self.params)

    def __call__(self, *args):
        inputs, params = args[:self.n_inputs], args[self.n_inputs:]
        return torch.func.functional_call(self.layers, dict(zip(self.names, params)), inputs)


_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def _thread_local_capture():
    """``make_graphed_callables`` captures with ``torch.cuda.graph``'s default mode, ``global``,
    and gives callers no way to change it; this makes ``thread_local`` that default while our
    capture runs.  ``torch.cuda.graph`` is a module attribute, seen by every thread: the lock
    keeps two captures of ours from interleaving their patch and restore (a capture of another
    library in another thread meanwhile would also get ``thread_local``, which only relaxes
    it)."""
    with _CAPTURE_LOCK:
        original = torch.cuda.graph
        torch.cuda.graph = functools.partial(original, capture_error_mode="thread_local")
        try:
            yield
        finally:
            torch.cuda.graph = original


class _Tree:
    """A module's sub-modules and parameters, walked once (``module.parameters()`` and
    ``module.modules()`` are recursive generators, slow in Python)."""

    def __init__(self, module: torch.nn.Module):
        self.modules = list(module.modules())
        # a parameter shared by two sub-modules appears twice: harmless for the checks here
        self.params = [p for m in self.modules for p in m._parameters.values() if p is not None]

    def has_hooks(self) -> bool:
        from torch.nn.modules import module as nn_module

        if (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks
                or nn_module._global_backward_hooks or nn_module._global_backward_pre_hooks):
            return True
        return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   or m._backward_pre_hooks for m in self.modules)

    def signature(self) -> tuple:
        """What a graph bakes in besides the input shape: where the parameters live and
        whether they train, and each sub-module's training flag and dropout rate."""
        dropout = torch.nn.modules.dropout._DropoutNd
        return (parameter_signature(self.params), tuple([p.requires_grad for p in self.params]),
                tuple([(m.training, m.p if isinstance(m, dropout) else None)
                       for m in self.modules]))
