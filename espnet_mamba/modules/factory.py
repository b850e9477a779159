"""Build a mixer from a name and a dict of options, with errors that name the bad option.

Also the one place where every unknown option of our encoders/decoders/mixers is reported
(:func:`check_options`, :func:`named_options`).  A config written for another architecture
(ESPnet's Conformer ``encoder_conf`` under ``encoder: samba_asr``) is told, line by line, what
to delete and what to keep; a misspelt key gets the closest valid option.  Nothing here imports
ESPnet: what ESPnet's own classes take comes from the class's ``config_counterparts``, which the
ESPnet integration sets when it registers the class (``integration/espnet_options.py``), called
only when an error is raised.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
from typing import Collection, Sequence

from torch import nn

from espnet_mamba.modules import execution as ex
from espnet_mamba.modules.bidirectional import Bidirectional
from espnet_mamba.modules.mamba import Mamba
from espnet_mamba.modules.mamba2 import Mamba2
from espnet_mamba.modules import option_rules as rules
from espnet_mamba.modules.option_rules import did_you_mean
from espnet_mamba.ops.causal_conv1d import KERNEL_WIDTHS

MIXERS = {"mamba": Mamba, "mamba2": Mamba2}

# The value rules of every option a mixer takes in ``mixer_conf`` (d_state, d_conv and expand are
# options of the encoder/decoder itself; tests/modules/test_option_rules.py checks that these
# tables name exactly the constructors' other options).
_DT = {"dt_min": rules.positive_number(), "dt_max": rules.at_least_option("dt_min"),
       "dt_init_floor": rules.positive_number(), "bias": rules.boolean(),
       "conv_bias": rules.boolean()}
MIXER_RULES = {
    "mamba": {**_DT, "dt_rank": lambda v, conf: None if v == "auto" or (
                  rules.integer(1)(v, conf) is None) else "must be 'auto' or an integer >= 1",
              "dt_init": rules.choice(("random", "constant")),
              "dt_scale": rules.positive_number()},
    "mamba2": {**_DT, "headdim": rules.integer(1), "ngroups": rules.integer(1),
               "A_init_range": rules.increasing_pair(), "chunk_size": rules.integer(1)},
}

def _width(conf) -> "int | None":
    """The model width of an encoder (output_size) or a decoder (encoder_output_size)."""
    width = conf.get("output_size", conf.get("encoder_output_size"))
    return width if isinstance(width, int) and not isinstance(width, bool) else None


def _width_name(conf) -> str:
    return "output_size" if "output_size" in conf else "encoder_output_size"


def _mamba2_shape(mixer_conf, conf):
    """Mamba2 splits d_inner = expand * width into heads of ``headdim`` channels, in
    ``ngroups`` groups: both must divide (checked here, not as a bare ValueError of the
    constructor)."""
    if conf.get("mixer") != "mamba2" or _width(conf) is None:
        return None
    defaults = inspect.signature(Mamba2).parameters
    headdim = mixer_conf.get("headdim", defaults["headdim"].default)
    ngroups = mixer_conf.get("ngroups", defaults["ngroups"].default)
    expand = conf.get("expand", 2)
    d_inner = int(expand * _width(conf))
    if d_inner % headdim:
        return ("headdim", headdim, f"must divide d_inner = expand * {_width_name(conf)} = "
                f"{rules.show(expand)} * {_width(conf)} = {d_inner}")
    if (d_inner // headdim) % ngroups:
        return ("ngroups", ngroups, f"must divide the number of heads, d_inner / headdim = "
                f"{d_inner} / {headdim} = {d_inner // headdim}")
    return None


def _attention_heads(value, conf):
    problem = rules.integer(1)(value, conf)
    if problem or _width(conf) is None or _width(conf) % value == 0:
        return problem
    return f"must divide {_width_name(conf)} = {_width(conf)}"


def _d_conv(value, conf):
    """The causal-conv1d kernels take widths 2-4: ``backend: cuda`` (kernels or an error) needs
    one of those; with ``auto`` other widths run the convolution on the PyTorch path."""
    problem = rules.integer(1)(value, conf)
    if problem or str(conf.get("backend") or "auto").lower() != "cuda":
        return problem
    if value not in KERNEL_WIDTHS:
        low, high = KERNEL_WIDTHS[0], KERNEL_WIDTHS[-1]
        return (f"backend 'cuda' needs {low}..{high} (causal-conv1d's kernels); with backend "
                f"'auto' other widths run on the PyTorch path")
    return None


# Rules of the options that mean the same in every encoder and decoder here; a class adds its
# own (``named_options(conf, extra_rules)``).  The rest are checked by their type annotation.
COMMON_RULES = {
    "input_size": rules.integer(1), "output_size": rules.integer(1),
    "vocab_size": rules.integer(1), "encoder_output_size": rules.integer(1),
    "num_blocks": rules.integer(1), "attention_heads": _attention_heads,
    "dropout_rate": rules.probability(), "attention_dropout_rate": rules.probability(),
    "mixer": rules.choice(tuple(MIXERS)),
    "d_state": rules.integer(1), "d_conv": _d_conv, "expand": rules.positive_number(),
    "mixer_conf": rules.nested(lambda conf: MIXER_RULES.get(conf.get("mixer", "mamba"), {}),
                               _mamba2_shape),
    # execution options (modules/execution.py)
    "backend": rules.backend_rule, "fused_kernels": rules.boolean(),
    "merge_directions": rules.choice(ex.MERGE_MODES), "packed_mixer": rules.choice(ex.PACKED_MIXERS),
    "cuda_graphs": rules.boolean(), "pack_sequences": rules.boolean(),
}

# (label, option names) of classes a config may have been written for, best guess first
Others = Sequence[tuple[str, Collection[str]]]


def check_options(owner: str, options: dict, valid) -> None:
    """Raise a ValueError naming unknown keys of ``options`` (with the closest valid key) and
    listing the valid ones."""
    unknown = [k for k in options if k not in valid]
    if unknown:
        named = ", ".join(f"{k!r}{did_you_mean(k, valid)}" for k in unknown)
        raise ValueError(f"{owner}: unknown option(s) {named}; valid: {', '.join(sorted(valid))}")


class UnknownOptionsError(TypeError):
    """A constructor got keys it does not take.  ``delete``: {key: label of the other class it
    belongs to}; ``keep``: given keys it takes; ``unknown``: {key: closest valid key or None}."""

    def __init__(self, message: str, delete: dict | None = None, keep: list | None = None,
                 unknown: dict | None = None):  # defaults: unpickling passes the message only
        super().__init__(message)
        self.delete, self.keep, self.unknown = delete or {}, keep or [], unknown or {}


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _yaml_value(value) -> str:
    """A config value as it reads in YAML (the user looks for that line)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)  # true/false/null, numbers, flow lists and dicts


def unknown_options_error(owner: str, conf: str, given: dict, valid: Sequence[str],
                          settable: Sequence[str], others: Others) -> UnknownOptionsError:
    """The error for ``given`` options of ``owner`` (a class name) of which some are not in
    ``valid``.  An unknown key that is an option of one of ``others`` is to be deleted (the
    config was written for that class), credited to the one of them that has most of the given
    keys (the first on a tie); the given keys ``owner`` takes are kept; the rest are typos."""
    kind = conf[:-len("_conf")] if conf.endswith("_conf") else conf
    unknown = [k for k in given if k not in valid]
    others = [(label, set(options)) for label, options in others]
    scored = [(sum(k in options for k in given), i) for i, (_, options) in enumerate(others)
              if options & set(unknown)]
    best = others[max(scored, key=lambda s: (s[0], -s[1]))[1]] if scored else None
    delete, typos = {}, {}
    for k in unknown:
        owners = ([best] if best and k in best[1] else []) + [o for o in others if k in o[1]]
        if owners:
            delete[k] = owners[0][0]
        else:
            close = difflib.get_close_matches(k, list(settable), n=1)
            typos[k] = close[0] if close else None
    keep = [k for k in given if k in settable]

    def lines(keys, note=lambda k: ""):
        return [f"    {k}: {_yaml_value(given[k])}{note(k)}" for k in keys]

    out = [f"{conf} of {owner}: {_n(len(unknown), 'option')} that {owner} does not take"]
    for label in dict.fromkeys(delete.values()):  # one section per other class, best first
        keys = [k for k in delete if delete[k] == label]
        out.append(f"  delete {_n(len(keys), 'line')} of {conf}, options of {label} that "
                   f"{owner} does not have:")
        out += lines(keys)
    if typos:
        espnet = f" nor of ESPnet's {kind}s" if others else ""
        out.append(f"  {_n(len(typos), 'unknown option')}, of neither {owner}{espnet}; "
                   f"fix or delete:")
        out += lines(typos, lambda k: f"    <- did you mean {typos[k]!r}?" if typos[k] else
                     "    <- no option of this name is close")
    if keep:
        out.append(f"  keep {_n(len(keep), 'line')} (options of {owner} too):")
        out += lines(keep)
    out.append(f"  every option of {owner} ({conf}): {', '.join(settable)}")
    return UnknownOptionsError("\n".join(out), delete, keep, typos)


def named_options(conf: str, extra_rules: dict | None = None):
    """Class decorator for our encoders/decoders: an unknown keyword of the constructor (a key
    in ESPnet's ``encoder_conf`` / ``decoder_conf``, named by ``conf``) raises an
    :class:`UnknownOptionsError` that says which lines to delete, which to keep and which are
    typos, instead of Python's bare "unexpected keyword argument".  ``cls.config_counterparts()``
    (set at registration into ESPnet's tasks; absent, every unknown key counts as a typo) gives
    the classes a config may have been written for (ESPnet's own); it is called only then, and
    if it fails the error is still raised, without that part.  The signature seen by ESPnet's
    --print_config (inspect.signature follows __wrapped__) is unchanged.

    Execution options the constructor takes are then replaced by those the environment sets
    (``ESPNET_MAMBA_EXECUTION``, ``ESPNET_MAMBA_BACKEND``: modules/execution.py), so that the
    machine that runs a model decides how, whatever config.yaml says.

    Then every value, given or default, is checked by :data:`COMMON_RULES` and ``extra_rules``
    (else by its annotation) before the constructor runs: a bad one raises
    :class:`~espnet_mamba.modules.option_rules.BadOptionError` naming ``<conf>.<key>``, before
    typeguard's check, which would name the argument only."""

    def decorate(cls):
        init = cls.__init__
        params = {k: p for k, p in inspect.signature(init).parameters.items() if k != "self"}
        valid = list(params)
        # what a config can hold: ESPnet itself passes the required ones (input_size...)
        settable = [k for k, p in params.items() if p.default is not inspect.Parameter.empty]
        signature = inspect.signature(init)
        table = {**COMMON_RULES, **(extra_rules or {})}
        hints = rules.type_hints(init)
        execution_keys = [k for k in ex.CONFIG_FIELDS if k in params]

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            recorded = kwargs.pop(rules.VERSION_KEY, None)
            if recorded is not None and not isinstance(recorded, (str, int, float)):
                raise rules.BadOptionError(f"{conf}.{rules.VERSION_KEY} = "
                                           f"{rules.show(recorded)}: must be a version string")
            if any(k not in params for k in kwargs):
                others = getattr(cls, "config_counterparts", None)
                try:
                    known = list(others()) if others else []
                except Exception:  # the advice must never hide the error itself
                    known = []
                raise unknown_options_error(cls.__name__, conf, kwargs, valid, settable,
                                            known)
            overrides = ex.environment_overrides() if execution_keys else {}
            kwargs.update({k: v for k, v in overrides.items() if k in execution_keys})
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            given = {k: v for k, v in bound.arguments.items() if k != "self"}
            rules.validate(conf, given, table, hints)
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        return cls

    return decorate


def mixer_options(cls) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p not in ("self", "d_model")]


def build_mixer(d_model: int, mixer: str = "mamba", bidirectional: bool = False,
                backend: str | None = None, execution: ex.Execution | None = None,
                **options) -> nn.Module:
    """A Mamba (v1) or Mamba2 mixer of width ``d_model``; ``options`` go to its constructor
    (d_state, d_conv, expand, headdim...); it runs by ``execution`` (modules/execution.py), or
    one made from ``backend`` and the environment."""
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; valid: {', '.join(MIXERS)}")
    cls = MIXERS[mixer]
    check_options(f"{mixer} mixer", options,
                  [k for k in mixer_options(cls) if k not in ("backend", "execution")])
    options["execution"] = ex.resolve(backend, execution)

    def make():
        return cls(d_model, **options)

    return Bidirectional(make(), make()) if bidirectional else make()


def resolve_mixer_conf(mixer: str, d_state: int, d_conv: int, expand: float,
               extra: dict | None) -> dict:
    """Constructor options of the mixer: the common three plus ``mixer_conf`` extras."""
    extra = dict(extra or {})
    if mixer not in MIXERS:
        raise ValueError(f"unknown mixer {mixer!r}; valid: {', '.join(MIXERS)}")
    check_options(f"mixer_conf of {mixer}", extra,
                  set(mixer_options(MIXERS[mixer])) - {"d_state", "d_conv", "expand", "backend",
                                                        "execution"})
    return {"d_state": d_state, "d_conv": d_conv, "expand": expand, **extra}
