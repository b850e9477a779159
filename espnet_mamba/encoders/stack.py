"""What every encoder here shares: ESPnet's encoder contract around a stack of layers.

input layer (conv subsampling) -> layers(x, lengths, mask, packing) -> final RMSNorm, plus
ESPnet's intermediate-CTC options.  Subclasses only say how to build one layer.

Execution options (modules/execution.py) are held in ``self.execution``.

``pack_sequences``: the input layer and the layers see the valid frames of the batch end to
end (1, total, d) instead of a padded batch (see modules/packing.py, encoders/input_layer.py
``packed``); outputs are unpacked again.  Exact either way.  Mamba2 mixers run the packed row
natively (``seq_idx``: modules/mamba2.py); Mamba v1 and attention unpack it.

``recompute_input_layer``: the conv subsampling's activations are recomputed in the backward
pass instead of kept (encoders/input_layer.py ``RecomputedConvs``): less memory for long inputs,
one more forward of the subsampling per step.  Off by default.  (A model option: it changes
which modules run, not their parameters, and is not changed at run time.)

``cuda_graphs``: training steps replay the layers' forward and backward from CUDA graphs, one
per (batch, bucketed length) shape (graphs/training.py; ``cuda_graph_conf``:
frame_step, batch_step, max_shapes, warmup).  Off by default.  With ``pack_sequences`` too, one
graph per bucketed packed length (every layer must run a packed row natively: Mamba2 mixers,
no attention), whatever the batch's number of utterances.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import torch
from torch import nn

from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from espnet_mamba.encoders.input_layer import InputLayer, check_input
from espnet_mamba.modules.factory import check_options
from espnet_mamba.modules.block import Stream
from espnet_mamba.modules.norm import RMSNorm
from espnet_mamba.modules.execution import Execution
from espnet_mamba.modules.packing import RowPacking
from espnet_mamba.modules.padding import lengths_to_mask
from espnet_mamba.modules.strict_load import StrictLoadMixin
from espnet_mamba.graphs.training import OPTIONS as GRAPH_OPTIONS, TrainingGraphs


logger = logging.getLogger(__name__)


class _Layers(nn.Module):
    """The layer loop and final norm as one callable of tensors, for a CUDA-graph capture:
    (xs, lengths, valid) of a padded batch, or with ``packed`` (xs (1, frames, d), seq_idx,
    reverse_index) of a packed row."""

    def __init__(self, encoders: nn.ModuleList, after_norm: nn.Module, packed: bool = False):
        super().__init__()
        self.encoders, self.after_norm, self.packed = encoders, after_norm, packed

    def forward(self, xs, a, b):
        args = (None, None, RowPacking(a, b)) if self.packed else (a, b, None)
        stream = Stream(None, xs)
        for layer in self.encoders:
            stream = layer(stream, *args)
        return stream.normed(self.after_norm)[0]


def pads_packed_rows(layers: nn.Module) -> list:
    """The kinds of layer that run a packed row by unpacking it (``packs_by_padding``)."""
    return sorted({type(m).__name__ for m in layers.modules()
                   if getattr(m, "packs_by_padding", False)})


class StackEncoder(StrictLoadMixin, AbsEncoder):
    def __init__(self, input_size: int, output_size: int, input_layer: Optional[str],
                 dropout_rate: float, layers: List[nn.Module], interctc_layer_idx: List[int],
                 interctc_use_conditioning: bool, execution: Execution,
                 cuda_graph_conf: Optional[dict] = None, recompute_input_layer: bool = False):
        super().__init__()
        self._output_size = output_size
        self.execution = execution
        self.embed = InputLayer(input_layer, input_size, output_size, dropout_rate,
                                recompute=recompute_input_layer)
        self.encoders = nn.ModuleList(layers)
        self.after_norm = RMSNorm(output_size, execution=execution)
        bad = [i for i in interctc_layer_idx if not 0 < i < len(layers)]
        if bad:
            raise ValueError(f"interctc_layer_idx {bad} out of range 1..{len(layers) - 1}")
        self.interctc_layer_idx = list(interctc_layer_idx)
        self.interctc_use_conditioning = interctc_use_conditioning
        self.conditioning_layer = None  # set by ESPnet's model when conditioning is on
        check_options("cuda_graph_conf", cuda_graph_conf or {}, GRAPH_OPTIONS)
        self.cuda_graph_conf = dict(cuda_graph_conf or {})
        self.execution_changed()
        # NaN/inf input (see _nonfinite): the rows of the last batch, and whether to pass them on
        # outside training too (set by integration/nonfinite_batches.py around the model's
        # forward, where validation runs)
        self.nonfinite_rows: List[int] = []
        self.pass_nonfinite = False

    def execution_changed(self) -> None:
        """Check the execution options that depend on the model, and (re)make the training
        graphs (graphs/training.py; not a module, so nothing of them is in the state dict).
        Called at build and by :func:`~espnet_mamba.modules.execution.set_execution`."""
        ex = self.execution
        if ex.cuda_graphs and self.interctc_layer_idx:
            raise ValueError("cuda_graphs: true does not combine with interctc_layer_idx (its "
                             "layers run eagerly): set one of them off")
        padding_kinds = pads_packed_rows(self.encoders)
        if ex.cuda_graphs and ex.pack_sequences and padding_kinds:
            # a graph replays fixed shapes; unpacking a row gives (batch, longest) shapes
            raise ValueError(
                "cuda_graphs: true with pack_sequences: true needs layers that run a packed "
                f"batch natively (mixer: mamba2 with packed_mixer fused or unfused, no "
                f"attention); these unpack it: {', '.join(padding_kinds)}. Set one of the "
                "options off")
        self.training_graphs = (TrainingGraphs(**self.cuda_graph_conf) if ex.cuda_graphs
                                else None)

    def output_size(self) -> int:
        return self._output_size

    def _apply(self, fn, *args, **kwargs):
        # .to()/.half()/.cuda() may give the parameters new storage: the graphs (and the
        # stand-ins that keep the old storage alive) go now, not at the next training step
        graphs = getattr(self, "training_graphs", None)
        if graphs is not None:
            graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def _nonfinite(self, batch: int) -> None:
        """Rows of NaN/inf features (found in check_input's one host copy, so at no cost).

        Training (and validation, through the model's forward): passed on, as ESPnet's own
        encoders do; the loss and the gradient norm are then not finite and ESPnet's trainer
        skips the step ("The grad norm is nan. Skipping updating the model"), so one bad
        utterance costs one step, not the job.  Decoding: ESPnet's TooShortUttError, the one
        error asr_inference catches per utterance (espnet2/bin/asr_inference.py logs
        "Utterance [<key>] <message>", writes an empty hypothesis and decodes the rest, a
        batch one utterance at a time); any other error ends the decoding job.
        """
        where = f"batch row(s) {self.nonfinite_rows} of {batch}"
        if self.training or self.pass_nonfinite:
            logger.warning("non-finite values (NaN/inf) in the encoder input at %s: passed on; "
                           "ESPnet's trainer skips a step whose loss or gradient norm is not "
                           "finite", where)
            return
        raise TooShortUttError(
            f"has non-finite values (NaN/inf) in the input ({where}); check the audio file "
            "and the feature statistics (feats_stats.npz)", 0, 0)

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor,
                prev_states: torch.Tensor = None, ctc=None,
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        host_lengths, self.nonfinite_rows = check_input(xs_pad, ilens, self.embed.input_size)
        if self.nonfinite_rows:
            self._nonfinite(len(host_lengths))
        # packed: the input layer too runs on the valid frames only (encoders/input_layer.py;
        # None: no frame left after the subsampling, the padded route)
        packed = (self.embed.packed(xs_pad, host_lengths)
                  if self.execution.pack_sequences and len(xs_pad) > 1 else None)
        packing = None
        if packed is not None:
            xs, packing = packed
            lengths = packing.lengths
            valid = lengths_to_mask(lengths, packing.max_len)  # for layers that unpack
        else:
            # (batch, 1, frames), True on valid frames; a broadcast compare, O(batch x frames)
            ilens = ilens.to(xs_pad.device)
            xs, masks = self.embed(xs_pad, lengths_to_mask(ilens, xs_pad.shape[1])[:, None, :])
            valid = masks.squeeze(1)
            lengths = valid.sum(-1)
        if self.training_graphs is not None and packing is None:
            out = self.training_graphs(self, lambda: _Layers(self.encoders, self.after_norm),
                                       xs, lengths, valid)
            if out is not None:
                return out, lengths, None
        unpack = packing.unpack if packing else (lambda t: t)
        if packing:
            if self.training_graphs is not None:
                out = self.training_graphs.packed(
                    self, lambda: _Layers(self.encoders, self.after_norm, packed=True), xs,
                    RowPacking.of(packing),
                    layout=f"packed ({self.execution.packed_mixer})")
                if out is not None:
                    return unpack(out), lengths, None
        intermediate = []
        stream = Stream(None, xs)  # residual adds fused into the next norm (modules/block.py)
        for idx, layer in enumerate(self.encoders, start=1):
            stream = layer(stream, lengths, valid, packing)
            if idx in self.interctc_layer_idx:
                out, xs = stream.normed(self.after_norm)
                intermediate.append((idx, unpack(out)))
                if self.interctc_use_conditioning:
                    xs = xs + self.conditioning_layer(ctc.softmax(out))
                # xs is the (fp32) residual; the next layer reads the norm in the layers' dtype
                stream = Stream(None, xs, 0.0, out.dtype)
        xs = unpack(stream.normed(self.after_norm)[0])
        if intermediate:
            return (xs, intermediate), lengths, None
        return xs, lengths, None
