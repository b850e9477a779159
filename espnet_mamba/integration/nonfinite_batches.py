"""Names the utterances of a training batch whose features hold NaN/inf.

Our encoders pass such rows on while training (encoders/stack.py ``_nonfinite``): the loss and
the gradient norm are then not finite and ESPnet's trainer skips the step with "The grad norm is
nan. Skipping updating the model", naming no utterance.  The encoder knows the bad rows (found in
its one host copy of the lengths) but not the utterance ids; ESPnet's trainer hands those to the
model's forward only (``utt_id``).  :func:`patch` wraps ``ESPnetASRModel.forward`` to log the
ids of the bad rows after the encoder has seen them, and to let validation (which runs the
model's forward in eval mode) pass them on too instead of refusing the batch.  No check of its
own, no GPU sync: it reads a list the encoder already filled.  Other encoders are not touched.

A batch too short for the model (ESPnet's ``TooShortUttError``, raised by our encoder's input
layer when a batch has fewer frames than its subsampling needs, by an empty utterance, or by the
STFT front-end for a few samples; integration/stft.py) is right for decoding, where
asr_inference catches it per utterance, but ESPnet's trainer catches nothing and the job ends.
The same wrapper turns it, in training and validation, into ESPnet's convention for a bad step:
the batch's utterance ids are logged with the error, and the forward returns a NaN loss that
depends on every trainable parameter, so ``loss.backward()`` makes every gradient NaN and the
trainer's check (``if not torch.isfinite(grad_norm)``, espnet2/train/trainer.py) skips the
update: "The grad norm is nan. Skipping updating the model".  Its stats hold only ``loss``
(NaN), which ESPnet's reporter leaves out of the epoch's weighted averages.  Under DDP every
rank's gradients are then NaN after the all-reduce, so all ranks skip the same step.  (With
``accum_grad`` > 1 the whole accumulated step is skipped, as for any non-finite loss.)
"""

from __future__ import annotations

import logging

import torch

from espnet_mamba.integration.patching import wrap_method

logger = logging.getLogger(__name__)


def _logging_bad_rows(original):
    def forward(self, *args, **kwargs):
        encoder = getattr(self, "encoder", None)
        if not hasattr(encoder, "pass_nonfinite"):  # not one of our encoders
            return original(self, *args, **kwargs)
        encoder.nonfinite_rows, encoder.pass_nonfinite = [], True
        try:
            out = original(self, *args, **kwargs)
        except Exception as exc:
            if not _is_too_short(exc):
                raise
            return _skipped_step(self, exc, args, kwargs)
        finally:
            encoder.pass_nonfinite = False
        if encoder.nonfinite_rows:
            keys = kwargs.get("utt_id")
            rows = encoder.nonfinite_rows
            bad = [keys[i] for i in rows] if keys is not None and len(keys) > max(rows) else rows
            logger.warning("non-finite values (NaN/inf) in the input of utterance(s) %s; "
                           "this batch's loss is not finite (batch: %s)", bad,
                           list(keys) if keys is not None else "utterance ids not given")
        return out

    return forward


def _is_too_short(exc) -> bool:
    # by name and module: the class lives in ESPnet's legacy tree, whose path moved before
    return type(exc).__name__ == "TooShortUttError" and type(exc).__module__.startswith("espnet")


def _batch_size(args, kwargs) -> int:
    speech = kwargs.get("speech", args[0] if args else None)
    return int(speech.shape[0]) if isinstance(speech, torch.Tensor) and speech.dim() else 1


def _skipped_step(model, exc, args, kwargs):
    """(loss, stats, weight) of a step ESPnet's trainer skips: a NaN loss on every trainable
    parameter (so every gradient is NaN), after naming the utterances."""
    keys = kwargs.get("utt_id")
    logger.warning("utterance(s) %s too short for the model (%s: %s); this %s step is skipped",
                   list(keys) if keys is not None else "(utterance ids not given)",
                   type(exc).__name__, exc, "training" if model.training else "validation")
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    nan = torch.tensor(float("nan"), device=device)
    if params and torch.is_grad_enabled():
        loss = nan * sum(p.sum() for p in params)
    else:
        loss = nan
    weight = torch.tensor(_batch_size(args, kwargs), device=device)
    return loss, {"loss": loss.detach()}, weight


def patch(module) -> bool:
    """Wrap ``module.ESPnetASRModel.forward`` (idempotent)."""
    cls = getattr(module, "ESPnetASRModel", None)
    # ESPnet's method, wrapped: only the model's forward is given the batch's utterance ids
    return cls is not None and wrap_method(cls, "forward", _logging_bad_rows,
                                           "_espnet_mamba_nonfinite")
