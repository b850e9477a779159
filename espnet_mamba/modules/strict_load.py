"""Refuse a checkpoint that does not match the model, even where ESPnet loads with strict=False.

ESPnet's ``build_model_from_file`` (used by asr_inference, Speech2Text, pack) calls
``load_state_dict(..., strict=False)``: a renamed or missing parameter would silently stay at its
random initialisation.  Modules that inherit this mixin check their whole sub-tree when a state
dict is loaded into them and raise an error that names the missing and unexpected keys.
"""

from __future__ import annotations


class CheckpointMismatchError(RuntimeError):
    pass


class StrictLoadMixin:
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        expected = {prefix + k for k in self.state_dict()}
        present = {k for k in state_dict if k.startswith(prefix)}
        missing, unexpected = sorted(expected - present), sorted(present - expected)
        if missing or unexpected:
            raise CheckpointMismatchError(
                f"checkpoint does not match {type(self).__name__} at '{prefix}': "
                f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''} "
                "(was the model trained with another config or plugin version?)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
