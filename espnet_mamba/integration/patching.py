"""Wrapping a method of an ESPnet class, once: the fixes in this package call it, each with its
reason beside the call."""

from __future__ import annotations

import functools


def wrap_method(cls, name: str, make_wrapper, mark: str) -> bool:
    """Replace ``cls.<name>`` by ``make_wrapper(original)`` unless it already carries ``mark``
    (idempotent: a second import or ``register()`` changes nothing).  Returns True if wrapped."""
    original = getattr(cls, name)
    if getattr(original, mark, False):
        return False
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, mark, True)
    setattr(cls, name, wrapper)
    return True
