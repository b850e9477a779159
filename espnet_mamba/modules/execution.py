"""Execution options: how the machine at hand runs a model's weights.

*Model* options (sizes, mixer, directions...) are the architecture: they are saved in the
config.yaml that ESPnet writes and packs, and they must match the weights.  *Execution* options
choose between implementations of the same arithmetic (results equal up to rounding) and belong
to the machine that runs the model:

=====================  ==========================================================================
``backend``            ops/backend.py: ``auto`` (the kernels where the tensors are on CUDA and
                       mamba-ssm imports), ``cuda`` (the kernels, or an error naming the missing
                       one; PyTorch with one notice on a CPU), ``torch``
``fused_kernels``      Mamba (v1) on CUDA: mamba-ssm's single ``mamba_inner_fn`` call per mixer
                       (it recomputes the conv and dt in backward: less memory) instead of the
                       same kernels one by one
``merge_directions``   a bidirectional Mamba (v1) mixer runs both directions' scans as one call:
                       ``auto`` (wherever the fused call above is not used), ``always``, ``never``
``packed_mixer``       Mamba2 on a packed row (``pack_sequences``): ``fused``, ``unfused``,
                       ``padded`` (unpacks it: no speed-up, for comparisons)
``cuda_graphs``        encoder: training steps; decoder: beam-search steps, replayed as CUDA graphs
``pack_sequences``     encoder: the valid frames of a batch end to end instead of a padded batch
=====================  ==========================================================================

Each has a default (the encoders' and decoders' constructors say which); ``encoder_conf`` /
``decoder_conf`` may set them for training.  At run time two things override them without
editing a packed config.yaml: the environment variable ``ESPNET_MAMBA_EXECUTION``
(``backend=torch,cuda_graphs=false``; ``ESPNET_MAMBA_BACKEND=torch`` is short for its backend),
read when a model is built, so it reaches ESPnet's stock ``asr_train`` / ``asr_inference`` /
``Speech2Text``; and :func:`set_execution` on a model already built.

``norm_kernel_min_numel`` is a tuning field, settable only through :func:`set_execution`: with
``backend: auto`` RMSNorm uses mamba-ssm's triton kernel for inputs of at least this many
elements (below it, e.g. decoding steps, torch's own rms_norm costs less host time).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from espnet_mamba.modules.option_rules import BadOptionError
from espnet_mamba.ops import backend as ops_backend
from espnet_mamba.ops.rms_norm import KERNEL_MIN_NUMEL

ENV_VAR = "ESPNET_MAMBA_EXECUTION"
BACKEND_ENV_VAR = ops_backend.ENV_VAR
MERGE_MODES = ("auto", "always", "never")
PACKED_MIXERS = ("fused", "unfused", "padded")


@dataclasses.dataclass(frozen=True)
class Execution:
    backend: str = "auto"
    fused_kernels: bool = True
    merge_directions: str = "auto"
    packed_mixer: str = "fused"
    cuda_graphs: bool = False
    pack_sequences: bool = False
    norm_kernel_min_numel: int = KERNEL_MIN_NUMEL

    def __post_init__(self):
        problem = next(((k, v, p) for k, v in dataclasses.asdict(self).items()
                        if (p := FIELD_RULES[k](v))), None)
        if problem:
            key, value, what = problem
            raise ValueError(f"execution option {key} = {value!r}: {what}")

    def replace(self, **changes) -> "Execution":
        unknown = [k for k in changes if k not in FIELDS]
        if unknown:
            raise TypeError(f"unknown execution option(s) {', '.join(unknown)}; valid: "
                            f"{', '.join(FIELDS)}")
        return dataclasses.replace(self, **changes)


def _bool(v):
    return None if isinstance(v, bool) else "must be true or false"


def _one_of(values):
    return lambda v: None if v in values else f"must be one of {', '.join(map(repr, values))}"


FIELD_RULES = {
    "backend": lambda v: None if v in ops_backend.BACKENDS else
    f"unknown Mamba backend; valid: {', '.join(ops_backend.BACKENDS)}",
    "fused_kernels": _bool,
    "merge_directions": _one_of(MERGE_MODES),
    "packed_mixer": _one_of(PACKED_MIXERS),
    "cuda_graphs": _bool,
    "pack_sequences": _bool,
    "norm_kernel_min_numel": lambda v: None if isinstance(v, int) and not isinstance(v, bool)
    and v >= 0 else "must be an integer >= 0",
}
FIELDS = tuple(f.name for f in dataclasses.fields(Execution))
# what encoder_conf / decoder_conf and ESPNET_MAMBA_EXECUTION may set
CONFIG_FIELDS = tuple(f for f in FIELDS if f != "norm_kernel_min_numel")


def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "yes", "on", "1"):
        return True
    if low in ("false", "no", "off", "0"):
        return False
    return low


def environment_overrides(environ: Mapping[str, str] | None = None) -> dict:
    """The execution options set by the environment: ``ESPNET_MAMBA_EXECUTION`` as
    ``key=value[,key=value...]`` and ``ESPNET_MAMBA_BACKEND`` (its backend).  Raises
    :class:`BadOptionError`, naming the variable, on a malformed entry, an unknown key, a bad
    value, or the two variables naming different backends."""
    environ = os.environ if environ is None else environ
    out: dict = {}
    text = environ.get(ENV_VAR, "").strip()
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise BadOptionError(f"{ENV_VAR}={text!r}: {item!r} is not key=value "
                                    f"(e.g. {ENV_VAR}=backend=torch,cuda_graphs=false)")
        if key not in CONFIG_FIELDS:
            raise BadOptionError(f"{ENV_VAR}={text!r}: unknown execution option {key!r}; "
                                    f"valid: {', '.join(CONFIG_FIELDS)}")
        out[key] = _parse_value(value)
        problem = FIELD_RULES[key](out[key])
        if problem:
            raise BadOptionError(f"{ENV_VAR}={text!r}: {key} = {value.strip()!r} {problem}")
    short = environ.get(BACKEND_ENV_VAR, "").strip()
    if short:
        if short.lower() not in ops_backend.BACKENDS:
            raise BadOptionError(
                f"{BACKEND_ENV_VAR}={short!r}: unknown Mamba backend; valid: "
                f"{', '.join(ops_backend.BACKENDS)} (or unset it)")
        if out.get("backend", short.lower()) != short.lower():
            raise BadOptionError(f"{BACKEND_ENV_VAR}={short!r} and {ENV_VAR}={text!r} name "
                                    "different backends: set one of them")
        out["backend"] = short.lower()
    return out


def resolve(backend: str | None = None, execution: "Execution | None" = None) -> Execution:
    """The Execution of a module built on its own (``Mamba(d, backend='torch')``): ``execution``
    as given, else one from ``backend`` with the environment's overrides."""
    if execution is not None:
        if backend is not None:
            raise TypeError("give either execution or backend, not both")
        return execution
    return Execution(**{"backend": (backend or "auto").lower(), **environment_overrides()})


def set_execution(model, **changes):
    """Change execution options of a built model (every encoder, decoder and module of this
    package in it) in place, e.g. ``set_execution(speech2text.asr_model, backend="torch",
    cuda_graphs=False)``; the weights are untouched.  Modules that must check a combination
    (an encoder with graphs and intermediate CTC) do so in ``execution_changed``; a refused
    change leaves the model as it was.  Returns ``model``."""
    replaced: dict = {}
    owners = []
    for module in model.modules():
        current = module.__dict__.get("execution")
        if isinstance(current, Execution):
            if id(current) not in replaced:
                replaced[id(current)] = (current, current.replace(**changes))
            owners.append((module, current))
    for module, current in owners:
        module.execution = replaced[id(current)][1]
    try:
        for module in model.modules():
            hook = getattr(module, "execution_changed", None)
            if hook is not None and isinstance(module.__dict__.get("execution"), Execution):
                hook()
    except Exception:
        for module, current in owners:
            module.execution = current
        raise
    return model
