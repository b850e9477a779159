"""ESPnet's own encoders/decoders and their options, for the error a config written for one of
them gets under one of ours: registration sets it as our classes' ``config_counterparts``,
which ``modules/factory.py: named_options`` calls when it raises.

Read from ESPnet when that error is raised, never copied: the classes are those of the task's
``ClassChoices`` our class is registered in (``encoder_choices`` of ``espnet2.tasks.asr`` ...),
in ESPnet's order, and their options are their constructors' signatures.  So a new ESPnet
encoder, or a renamed option, is covered without a change here.
"""

from __future__ import annotations

import importlib
import inspect
import sys


def _options(cls) -> list[str]:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no readable signature: nothing to credit to it
        return []
    return [p.name for p in params
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _choices_of(cls) -> list:
    """The ClassChoices of the imported ESPnet task modules that hold ``cls`` (else those whose
    base class it has): where the user picked it."""
    from espnet2.train.class_choices import ClassChoices

    def found():
        tasks = [m for name, m in list(sys.modules.items())
                 if name.startswith("espnet2.tasks.") and m is not None]
        return [c for m in tasks for c in vars(m).values()
                if isinstance(c, ClassChoices) and c.base_type is not None
                and issubclass(cls, c.base_type)]

    choices = found()
    if not choices:  # built outside any task (a script, a test): ASR's are the speech ones
        importlib.import_module("espnet2.tasks.asr")
        choices = found()
    holding = [c for c in choices if cls in c.classes.values()]
    return holding or choices


def espnet_counterparts(cls) -> list[tuple[str, list[str]]]:
    """[(label, options)] of ESPnet's classes that ``cls`` sits beside, e.g.
    ("ESPnet's conformer encoder (ConformerEncoder)", ["input_size", "output_size", ...])."""
    seen, out = set(), []
    for choices in _choices_of(cls):
        for name, other in choices.classes.items():
            if other in seen or other.__module__.split(".")[0] == "espnet_mamba":
                continue
            seen.add(other)
            out.append((f"ESPnet's {name} {choices.name} ({other.__name__})", _options(other)))
    return out
