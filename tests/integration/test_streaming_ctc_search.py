"""The frame-synchronous CTC prefix beam search of streaming partial results: with a beam wide
enough to keep every prefix, each prefix's probability is the sum over all alignments of the
frames so far that collapse to it (enumerated here); the result does not depend on how the
frames are chunked; a narrow beam still finds the best prefix on a peaked distribution; bad
options and shapes are named."""

import itertools
import math

import pytest
import torch

from espnet_mamba.integration.streaming_ctc_search import StreamingCTCPrefixSearch


def collapse(alignment, blank):
    return tuple(label for label, _ in itertools.groupby(alignment) if label != blank)


def enumerated(log_probs, blank):
    """prefix -> log of the summed probability of the alignments that collapse to it."""
    frames, vocabulary = log_probs.shape
    sums = {}
    for alignment in itertools.product(range(vocabulary), repeat=frames):
        p = math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(alignment)))
        key = collapse(alignment, blank)
        sums[key] = sums.get(key, 0.0) + p
    return {k: math.log(v) for k, v in sums.items()}


def random_log_probs(frames, vocabulary, seed, sharpness=1.0):
    g = torch.Generator().manual_seed(seed)
    return (sharpness * torch.randn(frames, vocabulary, generator=g, dtype=torch.float64)
            ).log_softmax(-1)


@pytest.mark.parametrize("blank", [0, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_probabilities_equal_the_sum_over_alignments(blank, seed):
    log_probs = random_log_probs(6, 3, seed)
    search = StreamingCTCPrefixSearch(beam=10_000, blank=blank, prune=1e9)
    search.extend(log_probs)
    want = enumerated(log_probs, blank)
    got = {k: math.log(math.exp(b) + math.exp(n)) for k, (b, n) in search.hypotheses().items()}
    assert got.keys() == want.keys()
    for prefix, value in want.items():
        assert got[prefix] == pytest.approx(value, abs=1e-9), prefix
    best, score = search.best()
    top = max(want, key=want.get)
    assert tuple(best) == top and score == pytest.approx(want[top], abs=1e-9)


@pytest.mark.parametrize("sizes", [[1], [3, 5], [40]])
def test_chunking_does_not_change_the_search(sizes):
    log_probs = random_log_probs(40, 7, seed=3, sharpness=3.0)
    whole = StreamingCTCPrefixSearch(beam=4, blank=0)
    whole.extend(log_probs)
    chunked = StreamingCTCPrefixSearch(beam=4, blank=0)
    start, k = 0, 0
    while start < len(log_probs):
        chunked.extend(log_probs[start:start + sizes[k % len(sizes)]])
        start, k = start + sizes[k % len(sizes)], k + 1
    assert chunked.hypotheses() == whole.hypotheses()
    assert chunked.best() == whole.best()


def test_a_narrow_beam_finds_the_labels_of_a_peaked_distribution():
    # frames that spell 1 1 - 1 2 2 - 3 (blank 0) with probability 0.9 each
    path = [1, 1, 0, 1, 2, 2, 0, 3]
    log_probs = torch.full((len(path), 4), math.log(0.1 / 3), dtype=torch.float64)
    log_probs[range(len(path)), path] = math.log(0.9)
    search = StreamingCTCPrefixSearch(beam=2, blank=0)
    search.extend(log_probs[:4])
    assert search.best()[0] == [1, 1]  # the blank separates the repeated label
    search.extend(log_probs[4:])
    assert search.best()[0] == [1, 1, 2, 3]
    assert len(search.prefixes) == 2
    search.reset()
    assert search.best() == ([], 0.0)


def test_the_prefix_beats_the_best_path_where_alignments_add_up():
    # best path per frame: blank, blank (0.4 each); but "1" sums over three alignments
    log_probs = torch.tensor([[0.4, 0.35, 0.25], [0.4, 0.35, 0.25]], dtype=torch.float64).log()
    search = StreamingCTCPrefixSearch(beam=5, blank=0)
    search.extend(log_probs)
    best, score = search.best()
    # P("1") = .35*.35 + .35*.4 + .4*.35 = 0.4025 > P("") = .16
    assert best == [1] and score == pytest.approx(math.log(0.4025))


def test_bad_options_and_shapes_are_named():
    with pytest.raises(ValueError, match="beam must be >= 1, got 0"):
        StreamingCTCPrefixSearch(beam=0, blank=0)
    with pytest.raises(ValueError, match="prune must be > 0"):
        StreamingCTCPrefixSearch(beam=2, blank=0, prune=0)
    with pytest.raises(ValueError, match=r"\(frames, vocabulary\), got shape \(1, 2, 3\)"):
        StreamingCTCPrefixSearch(beam=2, blank=0).extend(torch.zeros(1, 2, 3))
