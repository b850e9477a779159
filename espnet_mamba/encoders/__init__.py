"""ESPnet encoders (AbsEncoder) built from :mod:`espnet_mamba.modules`."""
