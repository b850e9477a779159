"""ESPnet's batched CTC prefix scorer, with the frame loop replaced by a closed form.

In joint CTC/attention decoding, ``BatchBeamSearch`` asks ESPnet's ``CTCPrefixScorer`` for the
prefix score of every pre-beam candidate at every output token.  Its batched implementation
(``CTCPrefixScoreTH``) walks the encoder frames in a Python loop, a few small tensor operations
per frame per token: about 1,500 frames for a minute of audio, so on a GPU the step is bound by
kernel launches, and on a CPU by per-operation overhead.  :class:`VectorizedCTCPrefixScoreTH`
computes the same forward variables and scores with a fixed number of operations per token
(``ops/ctc_prefix.py``: the recursion is a linear recurrence in the log semiring, solved with a
cumulative sum and ``logcumsumexp`` in float64).  It subclasses ESPnet's class and keeps its
state layout, so ``CTCPrefixScorer``'s state selection (``select_state``,
``batch_select_state`` -> the inherited ``index_select_state``) and ``BatchBeamSearch`` work
unchanged; the window (``--ctc_window_margin``) is decided by the same rules, and with
attention weights (no caller of the batched search passes them) or when streaming
(``extend_state``) ESPnet's own code runs.

Which searches use it (``ESPNET_MAMBA_CTC_PREFIX``):
  ``auto`` (default)  searches whose decoder is one of ours; ESPnet's own decoders decode as
                      in stock ESPnet, so their results and timings are ESPnet's
  ``all``             every batched beam search (also ESPnet's Conformer / Transformer models)
  ``espnet``          none: ESPnet's scorer everywhere
``ESPNET_MAMBA_DISABLE_HOOK=1`` (no hook at all) also leaves ESPnet's scorer everywhere.

Patched (ESPnet's globals, each with its reason at the call): ``CTCPrefixScorer.batch_init_state``
(where ESPnet builds its batched scorer for an utterance batch) and ``BeamSearch.__init__``
(the one place where a decoder and a CTC scorer meet: ``auto`` marks the CTC scorers of searches
whose decoder is ours).
"""

from __future__ import annotations

import logging
import os

import torch
from espnet2.legacy.nets.ctc_prefix_score import CTCPrefixScoreTH

from espnet_mamba.integration.patching import wrap_method
from espnet_mamba.ops.ctc_prefix import ctc_prefix_window, label_rows

logger = logging.getLogger(__name__)

ENV_VAR = "ESPNET_MAMBA_CTC_PREFIX"
MODES = ("auto", "all", "espnet")
_OURS_MARK = "_espnet_mamba_decoder_is_ours"


def mode() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: must be one of {', '.join(MODES)} "
                         "(auto: models with an espnet_mamba decoder; all: every model; espnet: "
                         "ESPnet's own scorer)")
    return value


class VectorizedCTCPrefixScoreTH(CTCPrefixScoreTH):
    """``CTCPrefixScoreTH`` whose ``__call__`` has no loop over frames (same inputs, state and
    outputs).  Build it from ESPnet's prepared scorer with :meth:`adopt`, or like ESPnet's."""

    def __init__(self, x, xlens, blank, eos, margin=0):
        super().__init__(x, xlens, blank, eos, margin=margin)
        self._prepare()

    @classmethod
    def adopt(cls, espnet_scorer: CTCPrefixScoreTH) -> VectorizedCTCPrefixScoreTH:
        """The same scorer, taking over what ESPnet's constructor prepared (the padded
        posteriors, lengths, window tables) instead of preparing it again."""
        new = cls.__new__(cls)
        new.__dict__.update(espnet_scorer.__dict__)
        new._prepare()
        return new

    def _prepare(self):
        logp = self.x[0]  # (T, B, O), padded frames already set to (logzero, blank 0)
        self._rows = label_rows(logp)  # (B * O, T)
        self._blank_cum = logp[:, :, self.blank].to(torch.float64).cumsum(0)  # (T, B)
        lengths = self.end_frames.to(self.device) + 1
        frames = torch.arange(self.input_length, device=self.device)
        self._valid = frames.unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
        self._shortest = int(lengths.min())  # frames before it are never padding
        self._end_frames = self.end_frames.to(self.device)
        self._hyp_utt = {}

    def extend_prob(self, x):
        super().extend_prob(x)
        self._prepare()

    def _utterance_of(self, n_hyp: int) -> torch.Tensor:
        utt = self._hyp_utt.get(n_hyp)
        if utt is None:
            utt = torch.arange(self.batch, device=self.device).repeat_interleave(
                n_hyp // self.batch)
            self._hyp_utt[n_hyp] = utt
        return utt

    def _window(self, r_sum, output_length, f_min_prev, f_max_prev):
        """(start, end, f_min, f_max): the frames the recursion walks, as ESPnet decides them
        (the whole utterance after the prefix's first possible frame, or with a margin a window
        around the frames the hypotheses' forward probabilities peak at)."""
        total = self.input_length
        if self.margin <= 0:
            return min(max(output_length, 1), total), total, 0, 0
        peak = r_sum.argmax(dim=0)
        low, high = torch.stack(peak.aminmax()).tolist()  # one host sync
        f_min, f_max = max(low, f_min_prev), max(high, f_max_prev)
        start = min(f_max_prev, max(f_min - self.margin, output_length, 1))
        return start, self._window_end(f_max, f_max + self.margin + 1), f_min, f_max

    def __call__(self, y, state, scoring_ids=None, att_w=None):
        if att_w is not None and self.margin > 0:  # windows from attention: ESPnet's own
            return super().__call__(y, state, scoring_ids, att_w)
        output_length = len(y[0]) - 1  # without the primer
        last = (y[:, -1] if torch.is_tensor(y)
                else torch.as_tensor([yi[-1] for yi in y], device=self.device))
        last = last.to(self.device)
        n_hyp = last.numel()
        utt = self._utterance_of(n_hyp)
        total, logzero = self.input_length, self.logzero
        if state is None:
            r_prev = torch.full((total, 2, n_hyp), logzero, dtype=self.dtype, device=self.device)
            r_prev[:, 1] = self._blank_cum.index_select(1, utt).to(self.dtype)
            s_prev, f_min_prev, f_max_prev = 0.0, 0, 1
        else:
            r_prev, s_prev, f_min_prev, f_max_prev = state
        r_sum = torch.logsumexp(r_prev, 1)  # (T, N)
        start, end, f_min, f_max = self._window(r_sum, output_length, f_min_prev, f_max_prev)
        if scoring_ids is not None and scoring_ids.size(-1) == 0:
            scoring_ids = None
        n_lab = self.odim if scoring_ids is None else scoring_ids.size(-1)
        self.scoring_num = 0 if scoring_ids is None else n_lab  # read by index_select_state

        r = torch.empty((total, 2, n_hyp, n_lab), dtype=self.dtype, device=self.device)
        r[:start - 1] = logzero  # before the prefix's first possible frame
        psi, edge = ctc_prefix_window(
            self._rows, self._blank_cum, self._valid if end > self._shortest else None, utt,
            scoring_ids, r_sum, r_prev[:, 1], last, self.blank, output_length == 0, start - 1,
            end, logzero, out=r[start - 1:end])
        if end < total:
            # past the window a hypothesis can still stay silent (all <eos> asks of it):
            # carry what it reached at the window's edge through the blank frames
            tail = (self._blank_cum[end:] - self._blank_cum[end - 1]).index_select(1, utt)
            r[end:, 0] = logzero
            r[end:, 1] = edge.unsqueeze(0) + tail.unsqueeze(2)

        if scoring_ids is None:
            log_psi = psi.to(self.dtype)
            scoring_idmap = None
        else:
            log_psi = torch.full((n_hyp, self.odim), logzero, dtype=self.dtype,
                                 device=self.device)
            log_psi.scatter_(1, scoring_ids, psi.to(self.dtype))
            scoring_idmap = torch.full((n_hyp, self.odim), -1, dtype=torch.long,
                                       device=self.device)
            scoring_idmap.scatter_(1, scoring_ids, torch.arange(
                n_lab, device=self.device).expand(n_hyp, -1))
        # <eos>: the prefix itself, read at the last frame of its utterance
        rows = torch.arange(n_hyp, device=self.device)
        log_psi[:, self.eos] = r_sum[self._end_frames.index_select(0, utt), rows]
        if self.eos != self.blank:
            log_psi[:, self.blank] = logzero  # a prefix never ends in blank
        return log_psi - s_prev, (r, log_psi, f_min, f_max, scoring_idmap)


def _use_ours(scorer) -> bool:
    chosen = mode()
    return chosen == "all" or (chosen == "auto" and getattr(scorer, _OURS_MARK, False))


def _vectorizing(original):
    def batch_init_state(self, x, xs_lengths=None):
        result = original(self, x, xs_lengths)
        if _use_ours(self) and type(self.impl) is CTCPrefixScoreTH:
            self.impl = VectorizedCTCPrefixScoreTH.adopt(self.impl)
            if not getattr(self, "_espnet_mamba_logged", False):  # once per scorer
                self._espnet_mamba_logged = True
                logger.info("CTC prefix scores: espnet_mamba's VectorizedCTCPrefixScoreTH "
                            "(%s=%s; 'espnet' for ESPnet's CTCPrefixScoreTH)", ENV_VAR, mode())
        return result

    return batch_init_state


def _marking_ctc_of_our_decoders(original):
    def __init__(self, scorers, *args, **kwargs):
        original(self, scorers, *args, **kwargs)
        # by module name first: a search of ESPnet's own models never imports our decoders
        if not any(type(s).__module__.startswith("espnet_mamba.") for s in scorers.values()):
            return
        from espnet2.legacy.nets.scorers.ctc import CTCPrefixScorer

        from espnet_mamba.decoders.recurrent import RecurrentDecoder

        if any(isinstance(s, RecurrentDecoder) for s in scorers.values()):
            for s in scorers.values():
                if isinstance(s, CTCPrefixScorer):
                    setattr(s, _OURS_MARK, True)

    return __init__


def patch_scorer(module) -> bool:
    """Wrap ``module.CTCPrefixScorer.batch_init_state`` (idempotent)."""
    cls = getattr(module, "CTCPrefixScorer", None)
    # ESPnet's method, wrapped: it is where the batched prefix scorer (a Python loop over the
    # frames at every token) is built, and the only place to build ours instead
    return cls is not None and wrap_method(cls, "batch_init_state", _vectorizing,
                                           "_espnet_mamba_vectorized")


def patch_beam_search(module) -> bool:
    """Wrap ``module.BeamSearch.__init__`` (idempotent)."""
    cls = getattr(module, "BeamSearch", None)
    # ESPnet's method, wrapped: the beam search is the only place where a CTC scorer meets its
    # model's decoder, and ``auto`` swaps the scorer only for our decoders
    return cls is not None and wrap_method(cls, "__init__", _marking_ctc_of_our_decoders,
                                           "_espnet_mamba_ctc_marking")

