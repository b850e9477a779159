"""Streaming recognition with a causal Samba-ASR model: audio chunks in, partial hypotheses out.

ESPnet's ``Speech2TextStreaming`` (espnet2/bin/asr_inference_streaming.py) takes only its
contextual-block encoders.  :class:`Speech2TextStreaming` here takes an ESPnet ASR model whose
encoder is causal (``encoder: samba_asr`` with ``encoder_conf.bidirectional: false``), with the
same constructor arguments where they apply and the same call, ``s2t(speech_chunk,
is_final)`` -> [(text, tokens, token_int, hyp), ...].

Three stages, each exact against the full-utterance computation:

* :class:`StreamingFrontend`: ESPnet's default front-end (STFT, power, log-mel) and the
  model's ``global_mvn`` from waveform chunks.  A feature frame is emitted once the samples of
  its STFT window have arrived.  With ``center: true`` (ESPnet's default) the signal is
  reflect-padded by n_fft // 2 samples at both ends: the start needs the first n_fft // 2 + 1
  samples, the end waits for ``is_final``.  ``utterance_mvn`` needs the whole utterance's
  mean and is refused.
* :class:`~espnet_mamba.encoders.streaming.StreamingEncoder`: encoder output frames once
  their input window has arrived, with fixed-size state.
* decoding: after each chunk, the CTC greedy (best path) hypothesis over the frames so far; at
  ``is_final``, ESPnet's own ``Speech2Text`` beam search (decoder, CTC prefix scorer, LM and
  every option of ``Speech2Text``) over all the encoder's output frames, so the final
  hypothesis is the offline one.
"""

from __future__ import annotations

import time
from itertools import groupby
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch

from espnet2.legacy.nets.beam_search import Hypothesis
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from espnet_mamba.encoders.streaming import StreamingEncoder, check_streamable

Result = Tuple[Optional[str], List[str], List[int], Hypothesis]


class StreamingFrontend:
    """Waveform chunks of one utterance -> the normalized feature frames that are final.

    ``model``: an ESPnet ASR model (``frontend: default``, ``normalize: global_mvn`` or none).
    ``frontend(chunk, is_final)``: chunk (samples,) float; returns (frames, n_mels).  The
    frames of all chunks are those of ``model.encode``'s front-end + normalize on the whole
    waveform.  State between chunks: fewer than n_fft samples, whatever the utterance length.
    """

    def __init__(self, model):
        from espnet2.asr.frontend.default import DefaultFrontend
        from espnet2.layers.global_mvn import GlobalMVN
        from espnet2.layers.stft import Stft

        frontend = getattr(model, "frontend", None)
        if not isinstance(frontend, DefaultFrontend) or frontend.stft is None:
            name = type(frontend).__name__ if frontend is not None else "none"
            raise ValueError(f"streaming needs ESPnet's default front-end (frontend: default, "
                             f"frontend_conf.apply_stft: true) for waveform input; the model "
                             f"has frontend: {name}")
        normalize = getattr(model, "normalize", None)
        if normalize is not None and not isinstance(normalize, GlobalMVN):
            raise ValueError(
                f"streaming cannot use normalize: {_normalize_name(normalize)}: it needs the "
                "whole utterance's statistics before the first frame; use normalize: "
                "global_mvn (statistics of the training data) or none")
        for part in ("preencoder", "postencoder"):
            if getattr(model, part, None) is not None:
                raise ValueError(f"streaming does not take a {part} ({part}: "
                                 f"{type(getattr(model, part)).__name__}); set {part}: null")
        stft = frontend.stft
        self.frontend, self.normalize = frontend, normalize
        self.n_fft, self.hop = stft.n_fft, stft.hop_length
        self.pad = stft.n_fft // 2 if stft.center else 0
        # the same STFT on the (already padded) samples of whole windows
        self.stft = Stft(n_fft=stft.n_fft, win_length=stft.win_length,
                         hop_length=stft.hop_length, center=False, window=stft.window,
                         normalized=stft.normalized, onesided=stft.onesided)
        self.dtype = next(model.parameters()).dtype
        self.reset()

    def reset(self) -> None:
        self.head: Optional[torch.Tensor] = None  # samples before the start's padding is known
        self.buffer: Optional[torch.Tensor] = None  # padded signal from the next frame's start
        self.tail = torch.zeros(0)  # the last pad + 1 samples, for the end's reflection
        self.samples = 0

    def state_numel(self) -> int:
        return sum(t.numel() for t in (self.head, self.buffer, self.tail) if t is not None)

    @torch.no_grad()
    def __call__(self, chunk, is_final: bool = False) -> torch.Tensor:
        x = _samples(chunk, self.samples).to(self.dtype)
        self.samples += len(x)
        p = self.pad
        if p:
            self.tail = torch.cat([self.tail.to(x.dtype), x])[-(p + 1):]
        if self.buffer is None:
            self.head = x if self.head is None else torch.cat([self.head, x])
            if len(self.head) > p:
                # reflect padding: x[p], ..., x[1] before x[0]
                self.buffer = torch.cat([self.head[1:p + 1].flip(0), self.head])
                self.head = None
            elif is_final:
                need, total = p + 1, self.samples
                self.reset()
                raise TooShortUttError(
                    f"has {total} audio samples: too short for the STFT front-end "
                    f"(n_fft={self.n_fft}, center=True needs at least {need})", total, need)
        else:
            self.buffer = torch.cat([self.buffer, x])
        feats = torch.zeros(0, self.frontend.output_size(), dtype=self.dtype)
        if self.buffer is not None:
            if is_final and p:
                # x[N-2], ..., x[N-1-p] after x[N-1]
                self.buffer = torch.cat([self.buffer, self.tail[:p].flip(0)])
            n = len(self.buffer)
            count = (n - self.n_fft) // self.hop + 1 if n >= self.n_fft else 0
            if count:
                window = self.buffer[:(count - 1) * self.hop + self.n_fft]
                self.buffer = self.buffer[count * self.hop:]
                feats = self._features(window)
        if is_final:
            self.reset()
        return feats

    def _features(self, samples: torch.Tensor) -> torch.Tensor:
        spec, _ = self.stft(samples[None])  # (1, frames, freq, 2)
        power = spec[..., 0] ** 2 + spec[..., 1] ** 2
        feats, lengths = self.frontend.logmel(power, None)
        if self.normalize is not None:
            feats, _ = self.normalize(feats, lengths)
        return feats[0]


def _normalize_name(normalize) -> str:
    names = {"UtteranceMVN": "utterance_mvn", "GlobalMVN": "global_mvn"}
    return names.get(type(normalize).__name__, type(normalize).__name__)


def _samples(chunk, offset: int) -> torch.Tensor:
    if isinstance(chunk, np.ndarray):
        chunk = torch.from_numpy(np.ascontiguousarray(chunk))
    if not isinstance(chunk, torch.Tensor):
        raise ValueError(f"audio chunk must be a 1-D array or tensor of samples, got "
                         f"{type(chunk).__name__}")
    if chunk.dim() != 1:
        raise ValueError(f"audio chunk must be 1-D (samples,) of one mono utterance, got shape "
                         f"{tuple(chunk.shape)} at sample {offset}")
    return chunk  # converted to the model's dtype as Speech2Text does (no scaling)
