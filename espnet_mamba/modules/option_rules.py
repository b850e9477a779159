"""What each option of our encoders, decoders and mixers may be set to, checked when the model
is built, with one message that names the option as the config writes it.

``encoder_conf.num_blocks = 0: must be an integer >= 1``: the conf and the key (nested confs
too: ``decoder_conf.mixer_conf.headdim``), the value and the valid range.  Without this, a bad
value gives a torch-internal error somewhere inside the constructor, or at the first forward
(``d_conv: 0``), or none at all (``num_blocks: 0`` trains a model with no layers); and
typeguard's error names the argument but not whether the encoder's or the decoder's was wrong.

A rule is a function ``(value, conf) -> None`` or the text of what is wrong (``conf``: every
option of the same constructor, for rules that depend on another option).  Options without a
rule are checked against their annotation (typeguard), so the type error names the option too.
"""

from __future__ import annotations

import difflib
import json
import typing
from typing import Callable, Mapping

import typeguard

from espnet_mamba.ops import backend as ops_backend

# the plugin version a training run records in its encoder_conf / decoder_conf
# (integration/resolved_config.py); the constructors accept it and build the same model
VERSION_KEY = "espnet_mamba_version"

Rule = Callable[[object, Mapping], "str | None"]
Rules = Mapping[str, Rule]


class BadOptionError(ValueError, TypeError):
    """A config option's value is out of range or of the wrong type (both: code that caught
    either of typeguard's TypeError and a constructor's ValueError still catches it)."""


def show(value) -> str:
    """A value as the message quotes it: strings quoted, the rest as YAML/JSON writes it."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)  # true/false/null, numbers, lists
    except (TypeError, ValueError):
        return repr(value)


def did_you_mean(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(least: int) -> Rule:
    return lambda v, conf: None if _is_int(v) and v >= least else \
        f"must be an integer >= {least}"


def positive_number() -> Rule:
    return lambda v, conf: None if _is_number(v) and v > 0 else "must be a number > 0"


def probability() -> Rule:
    """A dropout rate: 1 would drop everything."""
    return lambda v, conf: None if _is_number(v) and 0 <= v < 1 else \
        "must be a number in [0, 1)"


def boolean() -> Rule:
    return lambda v, conf: None if isinstance(v, bool) else "must be true or false"


def increasing_pair() -> Rule:
    """(low, high) with 0 < low <= high (Mamba2's A_init_range)."""
    def rule(v, conf):
        ok = (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_is_number, v))
              and 0 < v[0] <= v[1])
        return None if ok else "must be a pair [low, high] of numbers with 0 < low <= high"
    return rule


def choice(values, what: str = "") -> Rule:
    shown = ", ".join("null" if v is None else repr(v) for v in values)
    return lambda v, conf: None if v in values else f"{what}must be one of {shown}"


def at_least_option(other: str) -> Rule:
    """A number > 0 and >= the value of option ``other`` (dt_max >= dt_min)."""
    def rule(v, conf):
        low = conf.get(other)
        if not _is_number(v) or v <= 0:
            return "must be a number > 0"
        if _is_number(low) and v < low:
            return f"must be >= {other} = {show(low)}"
        return None
    return rule


def backend_rule(v, conf) -> "str | None":
    """``backend``: a name of ops/backend.py, or null ('auto').  (The environment's value, which
    overrides it, is checked where it is read: modules/execution.py.)"""
    valid = ", ".join(repr(b) for b in ops_backend.BACKENDS)
    if v is not None and (not isinstance(v, str) or v.lower() not in ops_backend.BACKENDS):
        return f"must be one of {valid}, or null ('auto')"
    return None


def nested(rules_of: Callable[[Mapping], Rules],
           across: "Callable[[Mapping, Mapping], tuple | None] | None" = None) -> Rule:
    """A dict option (``mixer_conf``...) whose keys have rules of their own, chosen from the
    options around it (the mixer's options depend on ``mixer``).  Marker for :func:`validate`.
    ``across(value, conf)``: after each key passed its own rule, a check of the dict against
    the options around it; returns None or (key, its value, what is wrong), reported as
    ``<conf>.<option>.<key>``."""
    def rule(v, conf):
        return None if v is None or isinstance(v, dict) else "must be a mapping (key: value)"
    rule.rules_of = rules_of
    rule.across = across
    return rule


def _type_problem(value, hint) -> "str | None":
    try:
        typeguard.check_type(value, hint)
    except typeguard.TypeCheckError:
        name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        return f"must be of type {name}"
    return None


def validate(prefix: str, conf: Mapping, rules: Rules, hints: Mapping | None = None) -> None:
    """Check every option of ``conf`` (named ``<prefix>.<key>``) by its rule, else by its type
    hint; raise :class:`BadOptionError` for the first bad one.  A nested rule's dict is checked
    the same way, and its keys must be those of its rules."""
    for key, value in conf.items():
        name = f"{prefix}.{key}"
        rule = rules.get(key)
        problem = rule(value, conf) if rule else (
            _type_problem(value, hints[key]) if hints and key in hints else None)
        if problem:
            raise BadOptionError(f"{name} = {show(value)}: {problem}")
        if value is not None and hasattr(rule, "rules_of"):
            inner = rule.rules_of(conf)
            unknown = [k for k in value if k not in inner]
            if unknown:
                raise BadOptionError(
                    f"{name}.{unknown[0]}: unknown option{did_you_mean(unknown[0], inner)}; "
                    f"valid: {', '.join(inner) or 'none'}")
            validate(name, value, inner)
        problem = rule.across(value or {}, conf) if getattr(rule, "across", None) else None
        if problem:
            key, shown, what = problem
            raise BadOptionError(f"{name}.{key} = {show(shown)}: {what}")


def type_hints(function) -> dict:
    """The resolved annotations of ``function`` (its module uses postponed annotations)."""
    try:
        return typing.get_type_hints(function)
    except Exception:  # an annotation that does not resolve: check by rules only
        return {}
