"""What this plugin registers into stock ESPnet, and the lazy import hook that does it.

ESPnet picks encoders/decoders from ``ClassChoices`` objects that live in each task module
(``espnet2.tasks.asr.encoder_choices`` ...); they are plain dicts with no entry points.  The
``espnet_mamba_hook.pth`` file that pip installs runs :func:`install_import_hook` at interpreter
start: it only puts a tiny finder on ``sys.meta_path`` (no torch, no ESPnet import, no cost).
When ESPnet later imports one of the task modules below, the finder lets the module execute and
then adds our classes to its choices, so the stock ``python -m espnet2.bin.asr_train`` sees
``encoder: samba_asr`` with no wrapper command and no change to ESPnet.

Set ``ESPNET_MAMBA_DISABLE_HOOK=1`` to turn the hook off; :func:`register` does it explicitly.
This module must stay importable without torch (it runs in every interpreter).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

DISABLE_ENV = "ESPNET_MAMBA_DISABLE_HOOK"

ENCODERS = {
    "samba_asr": "espnet_mamba.encoders.samba_asr:SambaASREncoder",
    "speech_mamba": "espnet_mamba.encoders.speech_mamba:SpeechMambaEncoder",
}
DECODERS = {
    "samba_asr": "espnet_mamba.decoders.samba_asr:SambaASRDecoder",
    "speech_mamba": "espnet_mamba.decoders.speech_mamba:SpeechMambaDecoder",
}

# {ESPnet task module: {ClassChoices attribute: {name: "module:Class"}}}.  Tasks whose
# encoder reads acoustic features and whose decoder is an attention-style AbsDecoder.
REGISTRY: dict[str, dict[str, dict[str, str]]] = {
    "espnet2.tasks.asr": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS},
    "espnet2.tasks.st": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS,
                         "extra_asr_decoder_choices": DECODERS,
                         "extra_mt_decoder_choices": DECODERS},
    "espnet2.tasks.s2t": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS},
    "espnet2.tasks.s2t_ctc": {"encoder_choices": ENCODERS},
    "espnet2.tasks.slu": {"encoder_choices": ENCODERS, "decoder_choices": DECODERS},
    "espnet2.tasks.enh_s2t": {"asr_encoder_choices": ENCODERS,
                              "asr_decoder_choices": DECODERS,
                              "st_encoder_choices": ENCODERS, "st_decoder_choices": DECODERS},
}


# {ESPnet module: "module:function"} run right after that module executes, before any other
# module imports names from it.  Fixes that leave every result unchanged: linear memory for
# ESPnet's pad masks, a clear (and per-utterance skippable) error for audio too short to STFT.
POST_IMPORT = {
    "espnet2.legacy.nets.pytorch_backend.nets_utils": "espnet_mamba.compat.pad_mask:patch",
    "espnet2.layers.stft": "espnet_mamba.compat.stft:patch",
}


class RegistrationError(RuntimeError):
    """A plugin name clashes with an ESPnet class, or a plugin class cannot be used."""


def load_class(target: str):
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def register_into(module) -> dict[str, list[str]]:
    """Add this plugin's classes to the ClassChoices of an imported ESPnet task module."""
    done: dict[str, list[str]] = {}
    for attr, entries in REGISTRY.get(module.__name__, {}).items():
        choices = getattr(module, attr, None)
        if choices is None:  # another ESPnet version: nothing to register into
            logger.debug("%s has no %s; skipped", module.__name__, attr)
            continue
        for name, target in entries.items():
            if name != name.lower():
                raise RegistrationError(f"plugin names must be lowercase: {name!r}")
            cls = load_class(target)
            present = choices.classes.get(name)
            if present is not None and present is not cls:
                raise RegistrationError(
                    f"espnet_mamba cannot register {attr[:-8]} {name!r} into "
                    f"{module.__name__}: ESPnet already has {present.__module__}."
                    f"{present.__qualname__} under that name")
            base = choices.base_type
            if base is not None and not issubclass(cls, base):
                raise RegistrationError(f"{target} is not a subclass of {base.__name__}")
            choices.classes[name] = cls
            done.setdefault(attr, []).append(name)
    if module.__name__ in REGISTRY:
        guard_checkpoint_loading(module)
    return done


# ---------------------------------------------------------------------- checkpoint key guard
# Why ESPnet classmethods are wrapped: ESPnet's AbsTask.build_model_from_file (the loader of
# asr_inference, Speech2Text, Speech2Text.from_pretrained / the model zoo) loads checkpoints
# with strict=False, so a checkpoint lacking e.g. ``ctc.ctc_lo.weight`` would decode with a
# randomly initialised CTC layer and no error.  Our encoders/decoders can only check their own
# keys (PyTorch gives each child just its prefix's keys), so the check has to sit on the root of
# the model.  The wrappers do no more than this: ``build_model_from_file`` runs unchanged with
# the guard armed (a ContextVar, so nothing leaks to other calls or threads), and
# ``build_model``, only when called from there and only for a model that contains one of our
# modules, puts load hooks on the model's root that refuse missing/unexpected keys anywhere
# (CheckpointMismatchError naming them); the hooks are removed before the model is returned.
# Models without our modules, training (build_model outside build_model_from_file) and direct
# load_state_dict calls see stock ESPnet.  Idempotent: a wrapper carries a marker and is never
# wrapped again (also not when inherited, e.g. SLUTask from ASRTask).
_GUARD_MARK = "_espnet_mamba_checkpoint_guard"


def _wrap_classmethod(cls, name: str, make_wrapper) -> bool:
    import functools
    import inspect

    static = inspect.getattr_static(cls, name, None)
    if not isinstance(static, classmethod) or getattr(static.__func__, _GUARD_MARK, False):
        return False
    wrapper = functools.wraps(static.__func__)(make_wrapper(static.__func__))
    setattr(wrapper, _GUARD_MARK, True)
    setattr(cls, name, classmethod(wrapper))
    return True


def guard_checkpoint_loading(module) -> list[str]:
    """Wrap build_model_from_file / build_model of the AbsTask subclasses defined in an ESPnet
    task module we register into (see the comment above).  Returns what was wrapped."""
    from espnet2.tasks.abs_task import AbsTask

    from espnet_mamba.modules import strict_load

    def from_file(func):
        def build_model_from_file(cls, *args, **kwargs):
            return strict_load.checked_build_from_file(func.__get__(cls), *args, **kwargs)
        return build_model_from_file

    def build(func):
        def build_model(cls, *args, **kwargs):
            return strict_load.attach_whole_model_guard(func(cls, *args, **kwargs))
        return build_model

    wrapped = []
    for obj in list(vars(module).values()):
        if (isinstance(obj, type) and issubclass(obj, AbsTask)
                and obj.__module__ == module.__name__):
            for name, make in (("build_model_from_file", from_file), ("build_model", build)):
                if _wrap_classmethod(obj, name, make):
                    wrapped.append(f"{obj.__name__}.{name}")
    return wrapped


@functools.cache
def _check_install_once() -> None:
    from espnet_mamba.install_check import check_torch_companions

    check_torch_companions()


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps a task module's real loader: execute it, then register into it."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # before ESPnet's task module runs: a torchaudio that cannot load fails there in words
        # that name neither torch nor torchaudio
        _check_install_once()
        self._loader.exec_module(module)
        if module.__name__ in POST_IMPORT:
            load_class(POST_IMPORT[module.__name__])(module)
        if module.__name__ in REGISTRY:
            register_into(module)

    def __getattr__(self, name):  # get_source, get_code, is_package... of the real loader
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    def __init__(self):
        self._resolving: set[str] = set()

    def find_spec(self, fullname, path=None, target=None):
        wanted = fullname in REGISTRY or fullname in POST_IMPORT
        if not wanted or fullname in self._resolving:
            return None
        self._resolving.add(fullname)  # let the other finders locate the real module
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RegisteringLoader(spec.loader)
        return spec


def _installed_finder():
    return next((f for f in sys.meta_path if isinstance(f, _PostImportFinder)), None)


DISABLED_HINT = (f"espnet_mamba's ESPnet registration is disabled ({DISABLE_ENV}=1): "
                 "unset it or call espnet_mamba.register()")


def _mentions_plugin(exc: BaseException) -> bool:
    import re  # only when an exception reaches the top level: no start-up cost

    names = re.compile(r"\b(" + "|".join(map(re.escape, sorted({*ENCODERS, *DECODERS})))
                       + r")\b")
    seen = set()
    while exc is not None and id(exc) not in seen:  # the exception and its causes
        seen.add(id(exc))
        if names.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _install_disabled_hint() -> None:
    """With the hook disabled, a config that names a plugin class fails inside ESPnet with
    "--encoder must be one of (...)", which does not say why.  Wrap ``sys.excepthook`` so that
    an uncaught exception whose message names one of our classes gets a note saying that the
    registration is off.  Costs nothing until such an exception reaches the top level."""
    previous = sys.excepthook
    if getattr(previous, "_espnet_mamba_hint", False):
        return

    def excepthook(exc_type, exc, tb):
        try:
            if (_installed_finder() is None and isinstance(exc, Exception)
                    and _mentions_plugin(exc) and DISABLED_HINT not in getattr(
                        exc, "__notes__", ())):
                exc.add_note(DISABLED_HINT)
        except Exception:  # never let the hint hide the real error
            pass
        previous(exc_type, exc, tb)

    excepthook._espnet_mamba_hint = True
    sys.excepthook = excepthook


def install_import_hook(force: bool = False) -> bool:
    """Put the finder on sys.meta_path (idempotent).  Called by the .pth file at start-up.

    Returns False if the hook is disabled by ESPNET_MAMBA_DISABLE_HOOK (unless ``force``); then
    only an excepthook is installed that explains a later error naming a plugin class.
    """
    if not force and os.environ.get(DISABLE_ENV, "").lower() not in ("", "0", "false", "no"):
        _install_disabled_hint()
        return False
    if _installed_finder() is None:
        sys.meta_path.insert(0, _PostImportFinder())
    for name in REGISTRY:  # task modules imported before the hook: register now
        if name in sys.modules:
            register_into(sys.modules[name])
    return True


def register(eager: bool = False) -> dict[str, dict[str, list[str]]]:
    """Register explicitly (e.g. with the hook disabled).

    Registers into the task modules already imported and installs the finder for the others;
    with ``eager`` imports every task module now (slow: about 8 s).
    Returns {task module: {choices attribute: [names]}} for the modules registered so far.
    """
    _check_install_once()
    install_import_hook(force=True)
    for name, target in POST_IMPORT.items():  # already imported: patch now (best effort)
        if name in sys.modules:
            load_class(target)(sys.modules[name])
    done = {}
    for name in REGISTRY:
        if eager and name not in sys.modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:  # a task whose optional dependencies are missing
                logger.warning("espnet_mamba: could not import %s (%s)", name, exc)
        if name in sys.modules:
            done[name] = register_into(sys.modules[name])
    return done
