"""Names the utterances of a training batch whose features hold NaN/inf.

Our encoders pass such rows on while training (encoders/stack.py ``_nonfinite``): the loss and
the gradient norm are then not finite and ESPnet's trainer skips the step with "The grad norm is
nan. Skipping updating the model", naming no utterance.  The encoder knows the bad rows (found in
its one host copy of the lengths) but not the utterance ids; ESPnet's trainer hands those to the
model's forward only (``utt_id``).  :func:`patch` wraps ``ESPnetASRModel.forward`` to log the
ids of the bad rows after the encoder has seen them, and to let validation (which runs the
model's forward in eval mode) pass them on too instead of refusing the batch.  No check of its
own, no GPU sync: it reads a list the encoder already filled.  Other encoders are not touched.
"""

from __future__ import annotations

import logging

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


def patch(module) -> bool:
    """Wrap ``module.ESPnetASRModel.forward`` (idempotent)."""
    cls = getattr(module, "ESPnetASRModel", None)
    # ESPnet's method, wrapped: only the model's forward is given the batch's utterance ids
    return cls is not None and wrap_method(cls, "forward", _logging_bad_rows,
                                           "_espnet_mamba_nonfinite")
