"""Registration of our encoders/decoders into ESPnet's task modules, and what runs right after
ESPnet imports one of the modules named in ``names``."""

from __future__ import annotations

import functools
import importlib
import logging
import sys

from espnet_mamba.integration import nonfinite_stats, resolved_config
from espnet_mamba.integration.checkpoint_guard import guard_checkpoint_loading
from espnet_mamba.integration.espnet_options import espnet_counterparts
from espnet_mamba.integration.import_hook import install_import_hook
from espnet_mamba.integration.install_check import check_torch_companions
from espnet_mamba.integration.names import POST_IMPORT, REGISTRY

logger = logging.getLogger(__name__)


class RegistrationError(RuntimeError):
    """A plugin name clashes with an ESPnet class, or a plugin class cannot be used."""


def load_class(target: str):
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


@functools.cache
def check_install_once() -> None:
    check_torch_companions()


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
            # the classes a config under this name may have been written for: read by the
            # unknown-option error of modules/factory.py (named_options)
            cls.config_counterparts = classmethod(espnet_counterparts)
            done.setdefault(attr, []).append(name)
    if module.__name__ in REGISTRY:
        guard_checkpoint_loading(module)
        # ESPnet's build_model, wrapped: the config asr_train writes after it must rebuild the
        # same model under later defaults, and say which plugin version trained it
        resolved_config.patch(module)
        # ESPnet's global, wrapped where main_worker looks it up: one NaN/inf utterance must
        # not make feats_stats.npz (and so every later step) NaN
        abs_task = sys.modules.get("espnet2.tasks.abs_task")
        if abs_task is not None:
            nonfinite_stats.patch(abs_task)
    return done


def after_import(module) -> None:
    """Run by the import hook right after ESPnet executes ``module``."""
    for patch in POST_IMPORT.get(module.__name__, ()):
        load_class(patch)(module)
    if module.__name__ in REGISTRY:
        register_into(module)


def register(eager: bool = False) -> dict[str, dict[str, list[str]]]:
    """Register explicitly (e.g. with the hook disabled).

    Registers into the task modules already imported and installs the finder for the others;
    with ``eager`` imports every task module now (slow: about 8 s).
    Returns {task module: {choices attribute: [names]}} for the modules registered so far.
    """
    check_install_once()
    install_import_hook(force=True)
    for name, patches in POST_IMPORT.items():  # already imported: patch now (best effort)
        if name in sys.modules:
            for patch in patches:
                load_class(patch)(sys.modules[name])
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
