"""espnet-mamba: Mamba (selective state-space) encoders and decoders for ESPnet.

Importing this package costs nothing and needs neither CUDA nor mamba-ssm (the ``.pth`` hook
imports it in every interpreter): the models live in ``espnet_mamba.encoders`` /
``espnet_mamba.decoders``, ESPnet's machinery in ``espnet_mamba.integration``.
"""

__version__ = "0.3.0"


def register(eager: bool = False) -> dict:
    """Register the encoders/decoders into ESPnet's tasks now (e.g. with the hook disabled by
    ESPNET_MAMBA_DISABLE_HOOK=1); see ``espnet_mamba.integration.registration.register``."""
    from espnet_mamba.integration.registration import register as _register

    return _register(eager)


def set_execution(model, **options):
    """Change how a built model runs (backend, cuda_graphs, fused_kernels, merge_directions,
    packed_mixer, pack_sequences), e.g. ``set_execution(speech2text.asr_model,
    backend="torch")``; the weights are untouched.  See ``espnet_mamba.modules.execution``."""
    from espnet_mamba.modules.execution import set_execution as _set_execution

    return _set_execution(model, **options)
