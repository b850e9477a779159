"""Refuse a checkpoint whose keys do not match the model, anywhere in a model with our modules.

ESPnet's ``AbsTask.build_model_from_file`` (the loader of asr_inference, ``Speech2Text``,
``Speech2Text.from_pretrained`` and so the model zoo) loads checkpoints with ``strict=False``:
a checkpoint lacking e.g. ``ctc.ctc_lo.weight`` would decode with a randomly initialised CTC
layer and no error.  Our encoders/decoders check their own keys (``modules/strict_load.py``),
but PyTorch gives each child only its prefix's keys, so the whole-model check has to sit on the
model's root.

Patched here (ESPnet's globals, so each patch says why): the task classes' ``build_model_from_file``
and ``build_model`` classmethods are wrapped, because they are the only place where ESPnet's
loader can be reached.  ``build_model_from_file`` runs unchanged with the guard armed (a
ContextVar, so nothing leaks to other calls or threads); ``build_model``, only when called from
there and only for a model that contains one of our modules, puts load hooks on the model's root
that refuse missing/unexpected keys anywhere (CheckpointMismatchError naming them); the hooks
are removed before the model is returned.  Models without our modules, training (build_model
outside build_model_from_file) and direct load_state_dict calls see stock ESPnet.  Idempotent:
a wrapper carries a marker and is never wrapped again (also not when inherited, e.g. SLUTask
from ASRTask).  ``ESPNET_MAMBA_DISABLE_HOOK=1`` leaves ESPnet unpatched.
"""

from __future__ import annotations

import contextvars

from espnet_mamba.integration.patching import wrap_classmethod
from espnet_mamba.modules.strict_load import (_STATE, CheckpointMismatchError, StrictLoadMixin,
                                              mismatch_message)

_GUARD_MARK = "_espnet_mamba_checkpoint_guard"


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



def guard_checkpoint_loading(module) -> list[str]:
    """Wrap build_model_from_file / build_model of the AbsTask subclasses defined in an ESPnet
    task module we register into (see the module docstring).  Returns what was wrapped."""
    from espnet2.tasks.abs_task import AbsTask

    def from_file(func):
        def build_model_from_file(cls, *args, **kwargs):
            return checked_build_from_file(func.__get__(cls), *args, **kwargs)
        return build_model_from_file

    def build(func):
        def build_model(cls, *args, **kwargs):
            return attach_whole_model_guard(func(cls, *args, **kwargs))
        return build_model

    wrapped = []
    for obj in list(vars(module).values()):
        if (isinstance(obj, type) and issubclass(obj, AbsTask)
                and obj.__module__ == module.__name__):
            for name, make in (("build_model_from_file", from_file), ("build_model", build)):
                if wrap_classmethod(obj, name, make, _GUARD_MARK):
                    wrapped.append(f"{obj.__name__}.{name}")
    return wrapped
