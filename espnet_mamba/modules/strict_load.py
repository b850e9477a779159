"""Refuse a checkpoint that does not match the model, even where ESPnet loads with strict=False.

ESPnet's ``build_model_from_file`` (used by asr_inference, Speech2Text, Speech2Text.from_pretrained
and so the model zoo, pack) calls ``model.load_state_dict(..., strict=False)``: a renamed or
missing parameter would silently stay at its random initialisation.  Two guards:

- :class:`StrictLoadMixin`: our encoders/decoders check their own sub-tree whenever a state dict
  is loaded into them (also ``encoder.load_state_dict(..., strict=False)`` by hand).
- the whole-model guard: while ESPnet's ``build_model_from_file`` runs (see
  :func:`checked_build_from_file`; ``espnet_mamba.registry`` wraps that classmethod of the task
  classes it registers into), a model that contains one of our modules gets a load hook on its
  root (:func:`attach_whole_model_guard`) that refuses missing or unexpected keys anywhere in the
  model (``ctc.*``, ``frontend.*``, ``normalize.*`` ...).  It has to sit on the root: PyTorch
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


def contains_plugin_module(model) -> bool:
    return any(isinstance(m, StrictLoadMixin) for m in model.modules())


def _root_pre_hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
                   unexpected_keys, error_msgs):
    if prefix == "" and _STATE.get() == "armed":
        _STATE.set("loading")


def _root_post_hook(module, incompatible_keys):
    if _STATE.get() != "loading":
        return
    _STATE.set("armed")  # ESPnet's fallback (legacy key renames) may load again
    missing, unexpected = incompatible_keys.missing_keys, incompatible_keys.unexpected_keys
    if missing or unexpected:
        raise CheckpointMismatchError(mismatch_message(
            f"the {type(module).__name__} built from the config (it contains espnet_mamba "
            "modules, so every key must match)", missing, unexpected))


def attach_whole_model_guard(model):
    """Called on a freshly built model inside build_model_from_file: hook its root if it
    contains one of our modules.  Returns the model."""
    if _STATE.get() is not None and contains_plugin_module(model) and not hasattr(
            model, "_espnet_mamba_guard_handles"):
        model._espnet_mamba_guard_handles = (
            model.register_load_state_dict_pre_hook(_root_pre_hook),
            model.register_load_state_dict_post_hook(_root_post_hook))
    return model


def detach_whole_model_guard(model) -> None:
    handles = getattr(model, "_espnet_mamba_guard_handles", None)
    if handles is not None:
        for h in handles:
            h.remove()
        del model._espnet_mamba_guard_handles


def checked_build_from_file(build_from_file, *args, **kwargs):
    """Run ESPnet's ``build_model_from_file`` with the whole-model guard armed.  It runs in a
    copy of the current context, so nothing of the guard's state outlives the call; the hooks
    are removed from the returned model, which is then what stock ESPnet returns."""
    def run():
        _STATE.set("armed")
        return build_from_file(*args, **kwargs)

    try:
        result = contextvars.copy_context().run(run)
    except CheckpointMismatchError as exc:  # name the file too (build_model_from_file's 2nd arg)
        model_file = kwargs.get("model_file", args[1] if len(args) > 1 else None)
        if model_file is None or str(model_file) in str(exc):
            raise
        raise CheckpointMismatchError(f"{model_file}: {exc}") from exc
    model = result[0] if isinstance(result, tuple) and result else result
    if hasattr(model, "_espnet_mamba_guard_handles"):
        detach_whole_model_guard(model)
    return result
