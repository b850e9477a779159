"""The config a training run writes records every option of our encoders/decoders, and the
plugin version that trained the model.

ESPnet's ``asr_train`` writes ``config.yaml`` (and so the packed model's config) from its
argparse namespace *after* ``build_model`` (abs_task.py ``main_worker``: "args should be saved
after object-buildings are done because they are allowed to modify args").  A config that lists
only the options the user set rebuilds a different model once a later version of this plugin
changes a default (``d_state``, ``input_layer``, a mixer's ``dt_rank``...), and the checkpoint
then no longer fits, or fits and decodes differently.  :func:`patch` wraps the task classes'
``build_model`` so that, once the model is built, ``<name>_conf`` of each of our classes holds
every model option with its value (defaults filled in; ``mixer_conf`` too, with the options of
the selected mixer), plus :data:`VERSION_KEY`.

Where the version goes: argparse refuses a top-level key it does not know (``asr_train
--config`` and ``build_model_from_file`` read the same YAML), and ESPnet has no free-form
metadata section; ``<name>_conf`` is a free dict handed to our constructor only.  So the version
is a key of our own ``encoder_conf`` / ``decoder_conf``, taken out here before the constructor
sees it (the constructor's unknown-option check would refuse it) and put back afterwards: stock
``asr_train --config``, ``asr_inference`` and ``Speech2Text`` (``from_pretrained`` too) read
such a config unchanged.  A model loaded from a file keeps the version it records; a training
run records the version that runs it.

Not filled in when unset: options that change how the model runs, not what it computes
(:func:`execution_options`): pinning their defaults into a packed model would stop a later
version from choosing a better way to run the same weights.  A value the user set is kept as is.
"""

from __future__ import annotations

import functools
import inspect
import logging

from espnet_mamba.integration.patching import wrap_classmethod
from espnet_mamba.modules.option_rules import VERSION_KEY

logger = logging.getLogger(__name__)

# the mixer options that are options of the encoder/decoder itself (see modules/factory.py)
_OWN_MIXER_OPTIONS = frozenset({"d_model", "d_state", "d_conv", "expand"})
_MARK = "_espnet_mamba_resolved_config"


def loading_from_file() -> bool:
    """Whether ESPnet's build_model_from_file is running (a loaded model keeps the version its
    config records): checkpoint_guard.py arms this context variable for that call's duration."""
    from espnet_mamba.modules.strict_load import _STATE

    return _STATE.get() is not None


@functools.cache
def execution_options() -> frozenset:
    """How a model runs (modules/execution.py: kernels, CUDA graphs, packing; and the
    encoders' cuda_graph_conf and recompute_input_layer), never its parameters or results."""
    from espnet_mamba.modules.execution import FIELDS

    return frozenset({*FIELDS, "execution", "cuda_graph_conf", "recompute_input_layer"})


def plugin_version() -> str:
    import espnet_mamba

    return espnet_mamba.__version__


def is_plugin_class(cls) -> bool:
    return isinstance(cls, type) and cls.__module__.startswith("espnet_mamba.")


def _plain(value):
    """A default as YAML's safe dumper writes it (tuples as lists), copied."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def resolved_mixer_conf(mixer: str, given: dict | None) -> dict | None:
    """Every option of mixer ``mixer`` that lives in ``mixer_conf``, given or default."""
    from espnet_mamba.modules import factory

    given = dict(given or {})
    if mixer not in factory.MIXERS:  # the constructor has refused it already; nothing to add
        return given or None
    # what mixer_conf may hold: the options that have a value rule (factory.MIXER_RULES, checked
    # against the constructors by the option-rule tests), else the constructor's own options
    rules = getattr(factory, "MIXER_RULES", {}).get(mixer)
    out = {}
    for name, p in inspect.signature(factory.MIXERS[mixer]).parameters.items():
        if (name in _OWN_MIXER_OPTIONS or name in execution_options()
                or (rules is not None and name not in rules)
                or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)):
            continue
        if name in given:
            out[name] = given.pop(name)
        elif p.default is not p.empty:
            out[name] = _plain(p.default)
    out.update(given)  # anything else the user wrote (refused by the constructor already)
    return out


def resolved_options(cls, conf: dict | None) -> dict:
    """``conf`` (a ``<name>_conf`` of ESPnet's config) for our class ``cls`` with every
    constructor option that has a default filled in, in the constructor's order; options ESPnet
    passes itself (no default: input_size, vocab_size...) are left out, and so are
    :func:`execution_options` the user did not set."""
    conf = dict(conf or {})
    conf.pop(VERSION_KEY, None)
    out = {}
    params = inspect.signature(cls).parameters  # follows named_options' __wrapped__
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in conf:
            out[name] = conf.pop(name)
        elif p.default is not p.empty and name not in execution_options():
            out[name] = _plain(p.default)
    out.update(conf)
    if "mixer_conf" in params:
        out["mixer_conf"] = resolved_mixer_conf(out.get("mixer", params["mixer"].default
                                                        if "mixer" in params else "mamba"),
                                                out.get("mixer_conf"))
    return out


def _plugin_confs(task, args):
    """(conf attribute, class) for each class choice of ``task`` that selects one of ours."""
    for choices in getattr(task, "class_choices_list", []):
        selected = getattr(args, choices.name, None)
        if not isinstance(selected, str):
            continue
        cls = choices.classes.get(selected.lower())
        if is_plugin_class(cls) and isinstance(getattr(args, f"{choices.name}_conf", None),
                                               (dict, type(None))):
            yield f"{choices.name}_conf", cls


def build_recording_options(build_model, task, args, *rest, **kwargs):
    """Run ESPnet's ``build_model`` with the version key out of our confs, then record the
    resolved options and the version in ``args`` (which asr_train then writes to config.yaml)."""
    confs = list(_plugin_confs(task, args)) if args is not None else []
    recorded, given = {}, {}
    for attr, cls in confs:
        given[attr] = getattr(args, attr)
        conf = dict(given[attr] or {})
        recorded[attr] = conf.pop(VERSION_KEY, None)
        if recorded[attr] is not None:  # written by a training run: every option it had is there
            for name, value in getattr(cls, "OLD_CONFIG_DEFAULTS", {}).items():
                conf.setdefault(name, value)
        setattr(args, attr, conf)
    try:
        model = build_model(args, *rest, **kwargs)
    except BaseException:
        for attr, _ in confs:  # leave the namespace as it came
            setattr(args, attr, given[attr])
        raise
    current, loading = plugin_version(), loading_from_file()
    for attr, cls in confs:
        version = recorded[attr] if loading and recorded[attr] else current
        if loading and recorded[attr] and str(recorded[attr]) != current:
            logger.info("%s.%s: this model was trained with espnet_mamba %s; running %s",
                        attr, VERSION_KEY, recorded[attr], current)
        setattr(args, attr, {**resolved_options(cls, getattr(args, attr)),
                             VERSION_KEY: str(version)})
    return model


def patch(module) -> list[str]:
    """Wrap ``build_model`` of the AbsTask subclasses defined in an ESPnet task module we
    register into (idempotent; a subclass that inherits it is not wrapped again).  Returns what
    was wrapped."""
    from espnet2.tasks.abs_task import AbsTask

    def build(func):
        def build_model(cls, args, *rest, **kwargs):
            return build_recording_options(func.__get__(cls), cls, args, *rest, **kwargs)
        return build_model

    wrapped = []
    for obj in list(vars(module).values()):
        if (isinstance(obj, type) and issubclass(obj, AbsTask)
                and obj.__module__ == module.__name__
                and wrap_classmethod(obj, "build_model", build, _MARK)):
            wrapped.append(f"{obj.__name__}.build_model")
    return wrapped
