"""CUDA-graph runtime: training steps of the encoders' layer stacks (``training``) and the
decoders' one-token beam-search step (``decoding``).  Used by encoders and decoders through
their options; built on :mod:`espnet_mamba.modules`."""
