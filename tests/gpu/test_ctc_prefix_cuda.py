"""The vectorised CTC prefix scorer on CUDA (one torch.logcumsumexp kernel per scan, no CPU
block loop): the same scores and states as ESPnet's CTCPrefixScoreTH on the same GPU, with the
checks and tolerances of tests/integration/test_ctc_prefix_scorer.py."""

import pytest
import torch
from ctc_prefix_checks import (
    CASES,
    assert_log_close,
    float32_errors,
    random_logp,
    run_steps,
)
from espnet2.legacy.nets.ctc_prefix_score import CTCPrefixScoreTH

from espnet_mamba.integration.ctc_prefix import VectorizedCTCPrefixScoreTH

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}T{}H{}S{}m{}".format(*c[:2], *c[3:]))
def test_scores_and_states_equal_espnet_float64_cuda(case):
    n_utt, frames, lengths, hyps, n_scored, margin = case
    logp = random_logp(n_utt, frames, 21, seed=frames + hyps, device="cuda")
    lengths = torch.tensor(lengths)
    steps = 15 if frames == 12 else 8
    ours = run_steps(VectorizedCTCPrefixScoreTH, logp, lengths, hyps, n_scored, steps, margin)
    theirs = run_steps(CTCPrefixScoreTH, logp, lengths, hyps, n_scored, steps, margin)
    on_cpu = run_steps(VectorizedCTCPrefixScoreTH, logp.cpu(), lengths, hyps, n_scored, steps,
                       margin)
    for (s1, st1, sel1), (s2, st2, sel2), (s3, _, _) in zip(ours, theirs, on_cpu):
        assert s1.is_cuda
        assert_log_close(s1, s2, 1e-12, 1e-9)
        assert_log_close(s1.cpu(), s3, 1e-12, 1e-9)
        assert st1[2:4] == st2[2:4]
        assert_log_close(st1[0], st2[0], 1e-12, 1e-9)
        assert_log_close(sel1[0], sel2[0], 1e-12, 1e-9)
        assert_log_close(sel1[1], sel2[1], 1e-12, 1e-9)


@pytest.mark.parametrize("n_scored,n_lab", [(10, 200), (0, 40)])
def test_float32_error_within_espnets_own_cuda(n_scored, n_lab):
    ours, espnet, scale = float32_errors(CTCPrefixScoreTH, VectorizedCTCPrefixScoreTH, n_scored,
                                         n_lab, device="cuda")
    assert ours <= 16 * torch.finfo(torch.float32).eps * scale and ours <= espnet, \
        (ours, espnet, scale)
