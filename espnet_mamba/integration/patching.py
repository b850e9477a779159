"""Wrapping a method of an ESPnet class, once: the fixes in this package call it, each with its
reason beside the call."""

from __future__ import annotations

import functools
import inspect


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


def wrap_classmethod(cls, name: str, make_wrapper, mark: str) -> bool:
    """The same for a classmethod defined on ``cls`` itself (a subclass that inherits it is left
    alone): ``make_wrapper(function)`` gets the plain function and returns one that takes
    ``cls`` first."""
    static = inspect.getattr_static(cls, name, None)
    if not isinstance(static, classmethod) or getattr(static.__func__, mark, False):
        return False
    wrapper = functools.wraps(static.__func__)(make_wrapper(static.__func__))
    setattr(wrapper, mark, True)
    setattr(cls, name, classmethod(wrapper))
    return True
