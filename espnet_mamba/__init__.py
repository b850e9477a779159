"""espnet-mamba: Mamba (selective state-space) encoders and decoders for ESPnet.

Importing this package is cheap and needs neither CUDA nor mamba-ssm: the models live in
``espnet_mamba.encoders`` / ``espnet_mamba.decoders`` and are imported when used.
"""

from espnet_mamba.registry import register  # noqa: F401

__version__ = "0.1.0"
