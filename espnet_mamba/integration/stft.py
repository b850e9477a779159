"""A clear, skippable error for audio too short for ESPnet's STFT front-end.

ESPnet's ``Stft`` (``torch.stft`` with ``center=True`` and reflect padding) fails on a batch
shorter than n_fft/2 + 1 samples with a message about tensor dimensions or padding sizes, before
any model code runs; ``asr_inference`` then aborts the whole decoding job.  :func:`patch` makes
such input raise ESPnet's own ``TooShortUttError`` naming the sizes, which ``asr_inference``
already catches per utterance (it logs it and writes an empty hypothesis), exactly as for audio
too short for the encoder's subsampling.  A multi-channel array given channel-first, whose
channels would read as samples, is refused with a message that says so.  Input the STFT can
process is not touched.
"""

from __future__ import annotations

from espnet_mamba.integration.patching import wrap_method


def min_samples(stft) -> int:
    """Fewest samples torch.stft accepts with this module's settings."""
    return stft.n_fft // 2 + 1 if stft.center else stft.n_fft


def _checking_length(original):
    def forward(self, input, ilens=None):
        need = min_samples(self)
        if input.dim() == 3 and input.shape[1] < need <= input.shape[2]:
            # (batch, channels, samples): e.g. a (2, n) stereo array given to Speech2Text,
            # which would otherwise read as "2 audio samples"
            raise ValueError(
                f"audio of shape {tuple(input.shape[1:])} looks channel-first (channels, "
                f"samples): ESPnet's STFT front-end takes (samples,) or (samples, channels) "
                f"per utterance (a batch of shape (batch, samples, channels)); transpose it "
                f"(e.g. speech.T)")
        if input.dim() >= 2 and input.shape[1] < need:
            from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import (
                TooShortUttError,
            )
            raise TooShortUttError(
                f"has {input.shape[1]} audio samples (empty or nearly): too short for the STFT "
                f"front-end (n_fft={self.n_fft}, center={self.center} needs at least {need})",
                input.shape[1], need)
        return original(self, input, ilens)

    return forward


def patch(module) -> bool:
    """Wrap ``module.Stft.forward`` (idempotent)."""
    cls = getattr(module, "Stft", None)
    # ESPnet's method, wrapped: too-short audio must be a TooShortUttError, skipped per utterance
    return cls is not None and wrap_method(cls, "forward", _checking_length,
                                           "_espnet_mamba_checked")
