"""Frame-synchronous CTC prefix beam search for the partial results of streaming recognition.

The search keeps, for each of the ``beam`` best label prefixes, the log-probability of all CTC
paths that collapse to it and end in a blank and of those that end in its last label (Graves,
2012, ch. 7; Hannun et al., 2014, without a language model).  It advances one encoder frame at
a time, so the prefixes after a stream's frames are the same however the frames were chunked.
The best prefix is a better partial result than the CTC best path: it sums over alignments
instead of following the single most likely one.  ESPnet's ``CTCPrefixScorer`` scores the
prefixes its attention beam search proposes over a whole utterance; this search proposes them
itself, frame by frame, which is what partial results need before the utterance has ended.
"""

from __future__ import annotations

import math

import torch

NEG_INF = float("-inf")


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


class _Prefix:
    """A label sequence as a node of a tree: its parent's sequence plus one label.  Extending a
    prefix and telling whether two extensions are the same cost O(1) whatever the length (a
    tuple would be copied and hashed in full at every frame: quadratic over a long stream);
    only the prefixes in the beam and their ancestors stay alive."""

    __slots__ = ("label", "parent")

    def __init__(self, parent: _Prefix | None, label: int | None):
        self.parent, self.label = parent, label

    def labels(self) -> list[int]:
        out, node = [], self
        while node.parent is not None:
            out.append(node.label)
            node = node.parent
        return out[::-1]


class StreamingCTCPrefixSearch:
    """CTC prefix beam search over encoder frames that arrive in chunks.

    ``beam``: prefixes kept after each frame.  ``blank``: the blank label's index.
    ``prune``: a frame's labels more than this far (natural log) below its most likely label
    are not tried as extensions (at most ``beam`` labels per frame are tried).
    ``extend(log_probs)``: (frames, vocabulary) CTC log-probabilities of the next frames.
    ``best()``: the most likely prefix so far and its log-probability.
    ``hypotheses()``: every prefix kept, {labels: (log P ending in blank, log P ending in its
    last label)}.
    """

    def __init__(self, beam: int, blank: int, prune: float = 10.0):
        if beam < 1:
            raise ValueError(f"the CTC prefix search's beam must be >= 1, got {beam}")
        if not prune > 0:
            raise ValueError(f"the CTC prefix search's prune must be > 0 (natural log), "
                             f"got {prune}")
        self.beam, self.blank, self.prune = beam, blank, prune
        self.reset()

    def reset(self) -> None:
        # prefix -> [log P(paths ending in blank), log P(paths ending in the prefix's last label)]
        self.prefixes: dict[_Prefix, list[float]] = {_Prefix(None, None): [0.0, NEG_INF]}

    def extend(self, log_probs: torch.Tensor) -> None:
        if log_probs.dim() != 2:
            raise ValueError(f"CTC log-probabilities must be (frames, vocabulary), got shape "
                             f"{tuple(log_probs.shape)}")
        if not len(log_probs):
            return
        log_probs = log_probs.detach().to("cpu", torch.float64)
        k = min(self.beam + 1, log_probs.shape[1])  # +1: the blank may be among the top
        top_values, top_labels = log_probs.topk(k, dim=-1)
        rows, top_values, top_labels = log_probs.tolist(), top_values.tolist(), top_labels.tolist()
        for row, values, labels in zip(rows, top_values, top_labels):
            floor = values[0] - self.prune
            tried = [(c, v) for c, v in zip(labels, values) if c != self.blank and v >= floor]
            self._frame(row, tried)

    def _frame(self, row: list[float], tried: list[tuple[int, float]]) -> None:
        blank = row[self.blank]
        # the kept prefixes by (parent, last label): an extension that spells one of them
        # adds to it instead of making a second node for the same labels
        kept = {(p.parent, p.label): p for p in self.prefixes if p.parent is not None}
        new: dict[_Prefix, list[float]] = {}

        def add(prefix, which, value):
            entry = new.get(prefix)
            if entry is None:
                entry = new[prefix] = [NEG_INF, NEG_INF]
            entry[which] = _logaddexp(entry[which], value)

        for prefix, (p_blank, p_label) in self.prefixes.items():
            total = _logaddexp(p_blank, p_label)
            add(prefix, 0, total + blank)  # a blank: the prefix stays
            last = prefix.label
            if last is not None:
                add(prefix, 1, p_label + row[last])  # its last label again, not yet separated
            for label, value in tried:
                child = kept.get((prefix, label))
                if child is None:
                    child = kept[(prefix, label)] = _Prefix(prefix, label)
                # the same label again is a new token only after a blank
                add(child, 1, (p_blank if label == last else total) + value)
        totals = {prefix: _logaddexp(*entry) for prefix, entry in new.items()}
        # a label repeated while its prefix has no path ending in a blank has probability 0
        ranked = sorted((p for p in new if totals[p] > NEG_INF), key=totals.get, reverse=True)
        self.prefixes = {prefix: new[prefix] for prefix in ranked[:self.beam]}

    def best(self) -> tuple[list[int], float]:
        prefix, (p_blank, p_label) = max(self.prefixes.items(),
                                         key=lambda item: _logaddexp(*item[1]))
        return prefix.labels(), _logaddexp(p_blank, p_label)

    def hypotheses(self) -> dict[tuple[int, ...], tuple[float, float]]:
        return {tuple(p.labels()): (b, n) for p, (b, n) in self.prefixes.items()}
