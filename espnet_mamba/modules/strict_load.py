"""Refuse a checkpoint that does not match the model, even where ESPnet loads with strict=False.

ESPnet's ``build_model_from_file`` (used by asr_inference, Speech2Text, Speech2Text.from_pretrained
and so the model zoo, pack) calls ``model.load_state_dict(..., strict=False)``: a renamed or
missing parameter would silently stay at its random initialisation.  Two guards:

- :class:`StrictLoadMixin`: our encoders/decoders check their own sub-tree whenever a state dict
  is loaded into them (also ``encoder.load_state_dict(..., strict=False)`` by hand).
- the whole-model guard (``espnet_mamba/integration/checkpoint_guard.py``): while ESPnet's
  ``build_model_from_file`` runs, a model that contains one of our modules gets a load hook on
  its root that refuses missing or unexpected keys anywhere in the model (``ctc.*``,
  ``frontend.*``, ``normalize.*`` ...).  It has to sit on the root: PyTorch
  hands each child only the keys under its own prefix, and a post-hook of a child runs before
  the later siblings (``ctc`` after ``decoder``) are loaded.  While it is active the mixin leaves
  the check to it, so one error names every mismatched key.  Outside ``build_model_from_file``
  the hooks are not there, and models without our modules never get them.

No ESPnet import here (modules/ sits below encoders/decoders); no torch import either.
"""

from __future__ import annotations

import contextvars

MAX_LISTED = 10


class CheckpointMismatchError(RuntimeError):
    pass


def _listed(keys) -> str:
    keys = sorted(keys)
    if len(keys) <= MAX_LISTED:
        return repr(keys)
    shown = ", ".join(map(repr, keys[:MAX_LISTED]))
    return f"[{shown}, ...] ({len(keys)} in all)"


def mismatch_message(what: str, missing, unexpected) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listed(unexpected)}")
    return (f"checkpoint does not match {what}: {'; '.join(parts)} "
            "(was the model trained with another config or plugin version?)")


# Shared with the whole-model guard, which sets it.
# None: no checked load going on.  "armed": inside build_model_from_file.  "loading": the root
# of a guarded model is loading a state dict (the mixins defer to the root's post-hook).
_STATE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "espnet_mamba_checked_load", default=None)


class StrictLoadMixin:
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if _STATE.get() != "loading":  # else the whole-model guard checks every key at the end
            expected = {prefix + k for k in self.state_dict()}
            present = {k for k in state_dict if k.startswith(prefix)}
            missing, unexpected = expected - present, present - expected
            if missing or unexpected:
                raise CheckpointMismatchError(mismatch_message(
                    f"{type(self).__name__} at '{prefix}'", missing, unexpected))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
