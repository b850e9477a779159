"""nn.Modules built from :mod:`espnet_mamba.ops`: mixers, norms, residual blocks."""
