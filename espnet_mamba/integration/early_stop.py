"""A warning in the decoding log, naming the utterance, when a hypothesis ends far too early
for its audio.

An attention-style decoder can emit <eos> long before the speech ends, and ESPnet's beam search
then returns that hypothesis as the result with nothing in the log: a samba_asr decoder with the
``prefix`` cross-connection, trained on utterances of a few seconds, returned 4 characters for a
20-minute recording decoded with CTC weight 0.  The CTC branch of the same model reads the same
encoder output frame by frame and cannot stop early, so the length of its greedy path is a
reference that needs no tuning per token unit (characters, BPE) or speaking rate.

After each search, the best hypothesis of every utterance is compared with the CTC greedy path
of that utterance's encoder output (blanks and repeats removed): fewer than
:data:`MIN_RATIO` times its tokens, and at least :data:`MIN_GAP` tokens fewer, logs a warning
with the utterance id, both counts and the number of encoder frames.  The results are never
changed.  Where the model has no CTC, nothing is checked.

How it reaches ESPnet's stock ``python -m espnet2.bin.asr_inference`` (whose own functions run
as ``__main__``, out of the import hook's reach), through the modules it imports (``names``,
``POST_IMPORT``):

* ``BeamSearch.__init__`` keeps a reference to the model's CTC from the ``ctc`` scorer it is
  given; ``Speech2Text`` always passes one, also with ``ctc_weight: 0``, where the search drops
  it from its scorers;
* ``BeamSearch.forward`` and ``BatchBeamSearch.forward`` (one utterance, or a batch of them)
  check their n-best lists after the search;
* ``AbsTask.build_streaming_iterator`` (``inference=True``, the data loader of the ``*_inference``
  commands) records the utterance ids of the batch being decoded, so the warning can name them;
  elsewhere (``Speech2Text`` called directly) the warning names the encoder frames only.
"""

from __future__ import annotations

import logging
import threading

import torch

from espnet_mamba.integration.patching import wrap_classmethod, wrap_method

logger = logging.getLogger(__name__)

MIN_RATIO = 0.5  # warn below this fraction of the CTC greedy path's tokens ...
MIN_GAP = 10  # ... when at least this many tokens are missing (short utterances vary)

_MARK = "_espnet_mamba_early_stop"
_CTC = "_espnet_mamba_ctc"  # BeamSearch attribute: the model's CTC module, or None
_current = threading.local()  # .keys: the utterance ids being decoded in this thread


def current_keys():
    return getattr(_current, "keys", None)


def ended_early(hyp_tokens: int, ctc_tokens: int) -> bool:
    return hyp_tokens < MIN_RATIO * ctc_tokens and ctc_tokens - hyp_tokens >= MIN_GAP


def message(utt: str | None, hyp_tokens: int, ctc_tokens: int, frames: int) -> str:
    who = f"utterance {utt}" if utt is not None else f"an utterance of {frames} encoder frames"
    return (f"{who}: the hypothesis ends after {hyp_tokens} tokens, while the CTC greedy path of "
            f"the same encoder output has {ctc_tokens} ({frames} encoder frames); the decoder "
            f"probably ended it early (emitted <eos> before the speech ended).  A CTC weight > 0 "
            f"(asr_inference --ctc_weight) keeps a hypothesis going while CTC hears speech.")


def ctc_greedy_lengths(ctc, x: torch.Tensor, lengths=None) -> list[int]:
    """Tokens on the CTC greedy path of each utterance: x (T, D) or (n, T, D)."""
    xs = x[None] if x.dim() == 2 else x
    best = ctc.argmax(xs)  # (n, T)
    if lengths is None:
        lengths = [xs.shape[1]] * xs.shape[0]
    blank = getattr(ctc, "blank_id", 0)
    counts = []
    for row, n in zip(best, [int(n) for n in lengths]):
        path = row[:n]
        if n == 0:
            counts.append(0)
            continue
        changed = torch.ones_like(path, dtype=torch.bool)
        changed[1:] = path[1:] != path[:-1]
        counts.append(int(((path != blank) & changed).sum()))
    return counts


def hypothesis_tokens(hyp, eos: int) -> int:
    """Output tokens of a hypothesis: its yseq without <sos> and the final <eos>."""
    yseq = hyp.yseq.tolist() if isinstance(hyp.yseq, torch.Tensor) else list(hyp.yseq)
    n = len(yseq) - 1
    return n - 1 if n > 0 and yseq[-1] == eos else n


def check(search, x: torch.Tensor, nbests: list, lengths=None) -> list[str]:
    """Warn for each utterance whose best hypothesis ended early; returns the messages."""
    ctc = getattr(search, _CTC, None)
    if ctc is None or not nbests or not hasattr(ctc, "argmax"):
        return []
    try:
        with torch.no_grad():
            counts = ctc_greedy_lengths(ctc, x, lengths)
    except Exception as exc:  # a CTC of another shape or kind: the check must never fail a run
        logger.debug("early-stop check skipped: %s", exc)
        return []
    keys = current_keys()
    keys = list(keys) if keys is not None and len(keys) == len(nbests) else None
    frames = [x.shape[0]] if x.dim() == 2 else (
        [int(n) for n in lengths] if lengths is not None else [x.shape[1]] * x.shape[0])
    found = []
    for i, (nbest, ctc_tokens) in enumerate(zip(nbests, counts)):
        if not nbest:
            continue
        hyp_tokens = hypothesis_tokens(nbest[0], search.eos)
        if ended_early(hyp_tokens, ctc_tokens):
            found.append(message(keys[i] if keys else None, hyp_tokens, ctc_tokens, frames[i]))
            logger.warning(found[-1])
    return found


def _keeping_ctc(original):
    def __init__(self, scorers, *args, **kwargs):
        original(self, scorers, *args, **kwargs)
        # in __dict__, not as a submodule: the search must not own (move, save) the model's CTC
        self.__dict__[_CTC] = getattr((scorers or {}).get("ctc"), "ctc", None)

    return __init__


def _checking(original):
    def forward(self, x, *args, **kwargs):
        # a search that retries itself (ESPnet does, with a lower minlenratio, when nothing
        # ended) is checked once, on the outermost call
        depth = getattr(_current, "depth", 0)
        _current.depth = depth + 1
        try:
            results = original(self, x, *args, **kwargs)
        finally:
            _current.depth = depth
        if depth:
            return results
        try:
            if x.dim() == 2:
                check(self, x, [results])
            elif isinstance(results, list) and all(isinstance(r, list) for r in results):
                lengths = kwargs.get("x_lengths", args[3] if len(args) > 3 else None)
                check(self, x, results, lengths)
        except Exception as exc:  # never fail a decode over a warning
            logger.debug("early-stop check failed: %s", exc)
        return results

    return forward


def _keyed_class(base):
    """A subclass of an inference data loader's class whose iteration records each batch's
    utterance ids (only a method added: the instance's class can be switched to it)."""

    def __iter__(self):
        for item in base.__iter__(self):
            keys = item[0] if isinstance(item, tuple) and len(item) == 2 else None
            _current.keys = keys if isinstance(keys, (list, tuple)) else None
            try:
                yield item
            finally:
                _current.keys = None

    return type(f"Keyed{base.__name__}", (base,), {"__iter__": __iter__, _MARK: True})


_KEYED = {}


def _keyed(loader):
    base = type(loader)
    if getattr(base, _MARK, False):
        return loader
    if base not in _KEYED:
        _KEYED[base] = _keyed_class(base)
    try:
        loader.__class__ = _KEYED[base]
    except TypeError as exc:  # a class whose instances cannot change class: no ids, no harm
        logger.debug("utterance ids not recorded for %s: %s", base.__name__, exc)
    return loader


def _recording_keys(original):
    def build_streaming_iterator(cls, *args, **kwargs):
        loader = original(cls, *args, **kwargs)
        return _keyed(loader) if kwargs.get("inference") else loader

    return build_streaming_iterator


def patch(module) -> bool:
    """Wrap what ``module`` holds of: ``BeamSearch`` (``__init__``, ``forward``),
    ``BatchBeamSearch.forward``, ``AbsTask.build_streaming_iterator`` (idempotent)."""
    done = False
    search = getattr(module, "BeamSearch", None)
    if search is not None and search.__module__ == module.__name__:
        done |= wrap_method(search, "__init__", _keeping_ctc, _MARK)
        done |= wrap_method(search, "forward", _checking, _MARK)
    batch = getattr(module, "BatchBeamSearch", None)
    if batch is not None and batch.__module__ == module.__name__ and "forward" in vars(batch):
        done |= wrap_method(batch, "forward", _checking, _MARK)
    task = getattr(module, "AbsTask", None)
    if task is not None and task.__module__ == module.__name__:
        done |= wrap_classmethod(task, "build_streaming_iterator", _recording_keys, _MARK)
    return done
