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
* decoding: after each chunk, a partial hypothesis over the frames so far from CTC alone
  (``partial_search``: a frame-synchronous CTC prefix beam search, or the CTC best path); at
  ``is_final``, ESPnet's own ``Speech2Text`` beam search (decoder, CTC prefix scorer, LM and
  every option of ``Speech2Text``) over all the encoder's output frames, so the final
  hypothesis is the offline one.  The attention decoder takes no part in the partial results:
  the Samba-ASR decoder reads the whole utterance's speech before its first token (the
  ``prefix`` cross-connection), so what it would say changes with every chunk; it rescores at
  the end, inside the joint beam search.

Endpointing (``endpoint_blank_seconds``, ``max_utterance_seconds``; both off by default) splits
a long stream into utterances: when the CTC best path has been blank for that long after some
speech, or the utterance has reached the maximum length, the utterance is finalised at the end
of the current chunk (as if ``is_final`` had come there: the front-end's end padding, the
encoder's last frames, the beam search) and the next samples start a new utterance from a fresh
front-end and encoder state.  Each finished utterance is thus exactly the offline decode of its
samples, and what is kept for the final search is bounded by the utterance, not the stream.
The state is reset rather than carried on because the models are trained on utterances that
start from a zero state: a recurrent state carried through an hour of audio is outside what
they were trained on.
"""

from __future__ import annotations

import time
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from espnet2.legacy.nets.beam_search import Hypothesis
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from espnet_mamba.encoders.streaming import StreamingEncoder, check_streamable
from espnet_mamba.integration.streaming_ctc_search import StreamingCTCPrefixSearch

Result = tuple[str | None, list[str], list[int], Hypothesis]
PARTIAL_SEARCHES = ("ctc_prefix", "ctc_best_path")
# The default partial beam's cap: on the mini recipe's causal model, beams of 10 and 20 gave the
# same partial WER, at 4x the search time (benchmarks/streaming_partials_cpu.py, README).
PARTIAL_BEAM_MAX = 10


class FinishedUtterance(NamedTuple):
    """An utterance ended by endpointing: its samples ``start:end`` of the stream (counted
    since the stream began), the ``nbest`` results of the beam search over them and the
    partial result over all its frames (what was shown before the beam search)."""

    start: int
    end: int
    results: list
    partial: Result | None = None


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
        weight = next(model.parameters())
        self.dtype, self.device = weight.dtype, weight.device
        self.reset()

    def reset(self) -> None:
        self.head: torch.Tensor | None = None  # samples before the start's padding is known
        self.buffer: torch.Tensor | None = None  # padded signal from the next frame's start
        self.tail: torch.Tensor | None = None  # the last pad + 1 samples (end's reflection)
        self.samples = 0

    def state_numel(self) -> int:
        return sum(t.numel() for t in (self.head, self.buffer, self.tail) if t is not None)

    @torch.no_grad()
    def __call__(self, chunk, is_final: bool = False) -> torch.Tensor:
        x = _samples(chunk, self.samples).to(device=self.device, dtype=self.dtype)
        self.samples += len(x)
        p = self.pad
        if p:
            self.tail = (x if self.tail is None else torch.cat([self.tail, x]))[-(p + 1):]
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
        feats = x.new_zeros(0, self.frontend.output_size())
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


def _frames(seconds: float | None, frame_seconds: float) -> int | None:
    """Encoder frames covering ``seconds`` (at least one); None stays None (off)."""
    return None if seconds is None else max(1, int(np.ceil(seconds / frame_seconds - 1e-9)))


def _normalize_name(normalize) -> str:
    names = {"UtteranceMVN": "utterance_mvn", "GlobalMVN": "global_mvn"}
    return names.get(type(normalize).__name__, type(normalize).__name__)


def _samples(chunk, offset: int) -> torch.Tensor:
    if isinstance(chunk, np.ndarray):
        chunk = torch.from_numpy(np.ascontiguousarray(chunk))
    if not isinstance(chunk, torch.Tensor):
        raise TypeError(f"audio chunk must be a 1-D array or tensor of samples, got "
                        f"{type(chunk).__name__}")
    if chunk.dim() != 1:
        raise ValueError(f"audio chunk must be 1-D (samples,) of one mono utterance, got shape "
                         f"{tuple(chunk.shape)} at sample {offset}")
    return chunk  # converted to the model's dtype as Speech2Text does (no scaling)


class Speech2TextStreaming:
    """Streaming recognition with a causal Samba-ASR model, ESPnet's interface.

    Examples:
        >>> s2t = Speech2TextStreaming("exp/asr/config.yaml", "exp/asr/valid.acc.ave.pth")
        >>> for chunk in chunks[:-1]:
        ...     partial = s2t(chunk, is_final=False)  # CTC prefix search so far
        >>> text, tokens, token_int, hyp = s2t(chunks[-1], is_final=True)[0]

    The arguments up to ``normalize_length`` are those of ESPnet's ``Speech2TextStreaming``
    and ``Speech2Text`` and mean the same; ``speech2text_conf`` passes any other option of
    ``Speech2Text`` (``ngram_file``, ``ctc_window_margin``...).  ``speech2text``: an ESPnet
    ``Speech2Text`` already built (e.g. by ``Speech2Text.from_pretrained``) instead of the
    files; its model and beam search are shared, not copied.

    ``__call__(speech, is_final)``: speech is the next chunk of samples (any length, numpy or
    torch, 1-D) of one utterance.  Returns [(text, tokens, token_int, hyp)]: before
    ``is_final``, one partial hypothesis (see ``partial_search``; ``hyp`` has ``yseq`` [sos,
    tokens...] and ``score`` its CTC log-probability over the frames so far); at ``is_final``,
    the ``nbest`` hypotheses of ``Speech2Text``'s beam search over the whole utterance's
    encoder output, which equals the offline encoder's (the same hypotheses as
    ``Speech2Text(speech)``).  After ``is_final`` (or ``reset()``) the next call starts a new
    utterance.  ``last_chunk_seconds`` holds the processing time of the last call and
    ``last_partial`` its partial result; at ``is_final``, the partial result over all the
    utterance's frames (the streamed result before the final beam search).

    Partial results (they do not change the final ones):

    * ``partial_search``: ``"ctc_prefix"`` (default): the best prefix of a CTC prefix beam
      search advanced frame by frame (:class:`StreamingCTCPrefixSearch`; the probability of a
      prefix sums over its alignments); ``"ctc_best_path"``: the most likely label of each
      frame, repeats and blanks removed (cheapest).
    * ``partial_beam_size``: prefixes that search keeps (default: ``beam_size``, at most
      :data:`PARTIAL_BEAM_MAX`).

    Endpointing, for long streams (both off by default; see the module's docstring):

    * ``endpoint_blank_seconds``: once the CTC best path has emitted a token and then only
      blanks for this long, the utterance ends at the end of the chunk; its beam search results
      are in ``finished`` (a list of :class:`FinishedUtterance` of the last call) and the call
      returns the (empty) partial result of the new utterance.  An utterance that has been
      blank for this long without any token is dropped (silence: no result, nothing kept).
    * ``max_utterance_seconds``: an utterance ends, as above, once its encoder frames cover
      this long.  With it, the frames kept for the beam search are bounded whatever the stream
      (with ``endpoint_blank_seconds`` alone, speech without pauses keeps growing).

    ``start``: the current utterance's first sample in the stream (0 until an endpoint).
    At ``is_final`` the stream's last utterance is decoded as before; if earlier utterances
    were ended by endpointing and this last one has no audio or too little for the front-end
    and subsampling, the call returns [] instead of raising.
    """

    def __init__(
        self,
        asr_train_config: Path | str | None = None,
        asr_model_file: Path | str | None = None,
        lm_train_config: Path | str | None = None,
        lm_file: Path | str | None = None,
        token_type: str | None = None,
        bpemodel: str | None = None,
        device: str = "cpu",
        maxlenratio: float = 0.0,
        minlenratio: float = 0.0,
        batch_size: int = 1,
        dtype: str = "float32",
        beam_size: int = 20,
        ctc_weight: float = 0.5,
        lm_weight: float = 1.0,
        penalty: float = 0.0,
        nbest: int = 1,
        normalize_length: bool = False,
        speech2text: Any = None,
        endpoint_blank_seconds: float | None = None,
        max_utterance_seconds: float | None = None,
        partial_search: str = "ctc_prefix",
        partial_beam_size: int | None = None,
        **speech2text_conf,
    ):
        if batch_size != 1:
            raise ValueError(f"Speech2TextStreaming decodes one utterance at a time: "
                             f"batch_size must be 1, got {batch_size}")
        for name, value in (("endpoint_blank_seconds", endpoint_blank_seconds),
                            ("max_utterance_seconds", max_utterance_seconds)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds (or None: off), got {value}")
        if partial_search not in PARTIAL_SEARCHES:
            raise ValueError(f"partial_search must be one of {', '.join(PARTIAL_SEARCHES)}, "
                             f"got {partial_search!r}")
        if partial_beam_size is None:
            partial_beam_size = min(beam_size, PARTIAL_BEAM_MAX)
        if partial_beam_size < 1:
            raise ValueError(f"partial_beam_size must be >= 1, got {partial_beam_size}")
        if speech2text is None:
            if asr_train_config is None:
                raise ValueError("pass asr_train_config (and asr_model_file), or speech2text")
            from espnet2.bin.asr_inference import Speech2Text

            speech2text = Speech2Text(
                asr_train_config=asr_train_config, asr_model_file=asr_model_file,
                lm_train_config=lm_train_config, lm_file=lm_file, token_type=token_type,
                bpemodel=bpemodel, device=device, maxlenratio=maxlenratio,
                minlenratio=minlenratio, batch_size=1, dtype=dtype, beam_size=beam_size,
                ctc_weight=ctc_weight, lm_weight=lm_weight, penalty=penalty, nbest=nbest,
                normalize_length=normalize_length, **speech2text_conf)
        model = speech2text.asr_model
        if getattr(speech2text, "beam_search_transducer", None) is not None or getattr(
                speech2text, "hugging_face_model", None) is not None:
            raise ValueError("Speech2TextStreaming decodes with ESPnet's attention/CTC beam "
                             "search; this model uses a transducer or Hugging Face decoder")
        check_streamable(model.encoder)
        if getattr(model, "ctc", None) is None:
            raise ValueError("Speech2TextStreaming needs the model's CTC (partial results)")
        self.speech2text = speech2text
        self.asr_model = model
        self.asr_train_args = getattr(speech2text, "asr_train_args", None)
        self.nbest = getattr(speech2text, "nbest", nbest)
        self.frontend = StreamingFrontend(model)
        self.encoder = StreamingEncoder(model.encoder)
        # one encoder frame: the front-end's hop times the subsampling's stride
        rate = model.frontend.logmel.mel_options["sr"]
        self.frame_seconds = self.frontend.hop * self.encoder.stride / rate
        self.endpoint_blank_frames = _frames(endpoint_blank_seconds, self.frame_seconds)
        self.max_utterance_frames = _frames(max_utterance_seconds, self.frame_seconds)
        self.prefix_search = (StreamingCTCPrefixSearch(partial_beam_size, model.blank_id)
                              if partial_search == "ctc_prefix" else None)
        self.last_chunk_seconds = 0.0
        self.last_partial: Result | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new stream (and utterance)."""
        self.samples = 0  # samples of the stream so far
        self.ended = 0  # utterances ended by endpointing in this stream
        self.finished: list[FinishedUtterance] = []  # those the last call ended
        self._new_utterance()

    def _new_utterance(self) -> None:
        self.frontend.reset()
        self.encoder.reset()
        self.start = self.samples  # the utterance's first sample in the stream
        self.frames: list[torch.Tensor] = []  # encoder output so far, for the final search
        self.n_frames = 0
        self.blank_run = 0  # blank frames at the end of the best path
        self.tokens: list[int] = []  # CTC best path, repeats and blanks removed
        self.last_label: int | None = None  # the path's last label (blank too)
        self.path_score = 0.0
        if self.prefix_search is not None:
            self.prefix_search.reset()

    @torch.no_grad()
    def __call__(self, speech: torch.Tensor | np.ndarray,
                 is_final: bool = True) -> list[Result]:
        start = time.perf_counter()
        self.finished = []
        try:
            samples = _samples(speech, self.samples)
            try:
                feats = self.frontend(samples, is_final=is_final)
                enc = self.encoder(feats, is_final=is_final)
            except TooShortUttError as e:
                if is_final and self.ended and e.limit > 0:  # (limit 0: non-finite audio)
                    return []  # the end of a stream split by endpointing: a tail, not speech
                raise
            finally:
                self.samples += len(samples)
            if len(enc):
                self.frames.append(enc)
                self.n_frames += len(enc)
                self._best_path(enc)
            self.last_partial = self._partial()
            if is_final:
                if not self.frames and self.ended:
                    return []
                frames = torch.cat(self.frames)
                return self.speech2text._decode_single_sample(frames)
            if self._endpoint():
                self.last_partial = self._partial()
            return [self.last_partial]
        finally:
            if is_final:
                self.reset()
            self.last_chunk_seconds = time.perf_counter() - start

    def _endpoint(self) -> bool:
        """End the utterance here if an endpointing rule says so; True if it did (or dropped
        a silence)."""
        silence = (self.endpoint_blank_frames is not None
                   and self.blank_run >= self.endpoint_blank_frames)
        if silence and not self.tokens:
            self._new_utterance()  # blanks only so far: nothing to decode, nothing to keep
            return True
        if silence or (self.max_utterance_frames is not None
                       and self.n_frames >= self.max_utterance_frames):
            # the rest of the utterance's frames, as at is_final: the end padding of the
            # STFT, the subsampling's last window
            feats = self.frontend(torch.zeros(0, dtype=self.frontend.dtype), is_final=True)
            enc = self.encoder(feats, is_final=True)
            if len(enc):
                self.frames.append(enc)
                self._best_path(enc)
            partial = self._partial()
            results = self.speech2text._decode_single_sample(torch.cat(self.frames))
            self.finished.append(FinishedUtterance(self.start, self.samples, results, partial))
            self.ended += 1
            self._new_utterance()
            return True
        return False

    def _best_path(self, enc: torch.Tensor) -> None:
        """Advance the partial searches: the CTC best path (also what endpointing reads) and
        the prefix search."""
        logp = self.asr_model.ctc.log_softmax(enc[None])[0]
        if self.prefix_search is not None:
            self.prefix_search.extend(logp)
        best, labels = logp.max(-1)
        self.path_score += float(best.sum())
        blank = self.asr_model.blank_id
        # runs within the chunk; last_label joins a run that a chunk boundary split
        for label, run in groupby(labels.tolist()):
            if label != blank and label != self.last_label:
                self.tokens.append(label)
            self.last_label = label
            self.blank_run = self.blank_run + len(list(run)) if label == blank else 0

    def _partial(self) -> Result:
        s2t, model = self.speech2text, self.asr_model
        if self.prefix_search is not None:
            tokens, score = self.prefix_search.best()
        else:
            tokens, score = self.tokens, self.path_score
        token_int = [t for t in tokens if t not in (model.sos, model.eos)]
        tokens = s2t.converter.ids2tokens(token_int)
        text = s2t.tokenizer.tokens2text(tokens) if s2t.tokenizer is not None else None
        yseq = torch.tensor([model.sos, *token_int], dtype=torch.long)
        hyp = Hypothesis(yseq=yseq, score=score, scores={"ctc": score})
        return text, tokens, token_int, hyp
