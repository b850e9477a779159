"""Build a mixer from a name and a dict of options, with errors that name the bad option."""

from __future__ import annotations

import functools
import inspect

from torch import nn

from espnet_mamba.modules.bidirectional import Bidirectional
from espnet_mamba.modules.mamba import Mamba
from espnet_mamba.modules.mamba2 import Mamba2

MIXERS = {"mamba": Mamba, "mamba2": Mamba2}


def check_options(owner: str, options: dict, valid) -> None:
    """Raise a ValueError naming unknown keys of ``options`` and listing the valid ones."""
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{owner}: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"valid: {', '.join(sorted(valid))}")


def named_options(cls):
    """Class decorator: an unknown keyword of the constructor (a misspelt key in ESPnet's
    encoder_conf / decoder_conf) raises a TypeError that names it *and* lists the valid ones,
    instead of Python's bare "unexpected keyword argument".  The signature seen by ESPnet's
    --print_config (inspect.signature follows __wrapped__) is unchanged."""
    init = cls.__init__
    valid = [p for p in inspect.signature(init).parameters if p != "self"]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown option(s) "
                            f"{', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def mixer_options(cls) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "d_model")]


def build_mixer(d_model: int, mixer: str = "mamba", bidirectional: bool = False,
                backend: str | None = None, **options) -> nn.Module:
    """A Mamba (v1) or Mamba2 mixer of width ``d_model``; ``options`` go to its constructor
    (d_state, d_conv, expand, headdim...)."""
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; valid: {', '.join(MIXERS)}")
    cls = MIXERS[mixer]
    check_options(f"{mixer} mixer", options, mixer_options(cls))
    options["backend"] = backend

    def make():
        return cls(d_model, **options)

    return Bidirectional(make(), make()) if bidirectional else make()
