"""The closed-form CTC prefix recursion (ops/ctc_prefix.py) against the recursion itself, one
frame per Python step in float64."""

import pytest
import torch

from espnet_mamba.ops.ctc_prefix import (
    ctc_prefix_window,
    label_rows,
    log_linear_scan,
    logcumsumexp,
)

LOGZERO = -1e10


def scan_loop(h0, drive, factors):
    """h_i = logaddexp(h_{i-1}, drive_{i-1}) + factors_i, step by step."""
    hs = [h0.expand_as(drive[0])]
    for i in range(1, drive.shape[0]):
        hs.append(torch.logaddexp(hs[-1], drive[i - 1]) + factors[i])
    return torch.stack(hs)


@pytest.mark.parametrize("steps", [1, 2, 64, 65, 81, 82, 200, 1000, 1601])
def test_logcumsumexp_equals_torch(steps):
    """The CPU path in blocks gives torch.logcumsumexp's values, for lengths around the
    threshold, whole and partial blocks, with logzero and -inf entries and a large spread."""
    x = torch.randn(steps, 3, 5, dtype=torch.float64) * 300
    x[steps // 3] = LOGZERO
    x[:, 1, 2] = float("-inf")
    got, want = logcumsumexp(x), torch.logcumsumexp(x, 0)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    fin = torch.isfinite(want)
    assert torch.allclose(got[fin], want[fin], rtol=1e-13, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 5, 150])
def test_log_linear_scan_equals_the_recurrence(steps):
    """Closed form == the recurrence, with per-step factors from -60 to 0 (sums to -9000) and
    drives that include logzero."""
    factors = -torch.rand(steps, 4, 6, dtype=torch.float64) * 60
    drive = torch.randn(steps, 4, 6, dtype=torch.float64) * 20
    drive[: steps // 2, 0] = LOGZERO
    h0 = torch.randn(4, 6, dtype=torch.float64)
    cum = factors.clone()
    cum[0] = 0.0
    cum = cum.cumsum(0)
    want = scan_loop(h0, drive, factors)
    assert torch.allclose(log_linear_scan(h0, drive, cum), want, rtol=1e-12, atol=1e-9)


def reference_window(logp, valid, utt, ids, r_sum, r_blank, last, blank, first, t0, t1):
    """rn, rb, psi by the definition: a Python step per frame, float64."""
    n_hyp = utt.numel()
    xc = torch.stack([logp[:, utt[n], ids[n]] for n in range(n_hyp)], 1)  # (T, N, S)
    xb = logp[:, utt, blank].unsqueeze(2)  # (T, N, 1)
    phi = torch.where(ids.unsqueeze(0) == last.view(1, -1, 1), r_blank.unsqueeze(2),
                      r_sum.unsqueeze(2))
    rn = [xc[t0] if first else torch.full_like(xc[t0], LOGZERO)]
    rb = [torch.full_like(xc[t0], LOGZERO)]
    psi = rn[0]
    for t in range(t0 + 1, t1):
        rn.append(torch.logaddexp(rn[-1], phi[t - 1]) + xc[t])
        rb.append(torch.logaddexp(rn[-2], rb[-1]) + xb[t])
        psi = torch.logaddexp(psi, phi[t - 1] + xc[t])
    return torch.stack(rn), torch.stack(rb), psi


@pytest.mark.parametrize("first,t0,t1", [(True, 0, 90), (False, 3, 90), (False, 10, 40),
                                         (False, 89, 90)])
@pytest.mark.parametrize("partial", [True, False])
def test_prefix_window_equals_the_recursion(first, t0, t1, partial):
    """Two utterances (90 and 61 frames, ESPnet's padding: labels logzero, blank 0), 3
    hypotheses each, the hypothesis's last label among the scored ones for some: rn, rb and psi
    equal the frame-by-frame recursion (float64; padded frames: both at most logzero / 2)."""
    gen = torch.Generator().manual_seed(0)
    n_frames, n_utt, n_lab, hyps, blank = 90, 2, 11, 3, 0
    logp = torch.log_softmax(torch.randn(n_frames, n_utt, n_lab, generator=gen,
                                         dtype=torch.float64) * 3, -1)
    lengths = torch.tensor([90, 61])
    valid = torch.arange(n_frames).unsqueeze(1) < lengths
    logp = logp.masked_fill(~valid.unsqueeze(2), LOGZERO)
    logp[:, :, blank] = logp[:, :, blank].masked_fill(~valid, 0.0)
    utt = torch.arange(n_utt).repeat_interleave(hyps)
    n_hyp = utt.numel()
    ids = (torch.stack([torch.randperm(n_lab, generator=gen)[:5] for _ in range(n_hyp)])
           if partial else torch.arange(n_lab).expand(n_hyp, -1))
    last = torch.where(torch.arange(n_hyp) % 2 == 0, ids[:, 2], torch.full((n_hyp,), 99))
    r_blank = torch.randn(n_frames, n_hyp, generator=gen, dtype=torch.float64) * 5 - 20
    r_sum = torch.logaddexp(r_blank, torch.randn(n_frames, n_hyp, generator=gen,
                                                 dtype=torch.float64) * 5 - 20)
    blank_cum = logp[:, :, blank].cumsum(0)
    out = torch.empty(t1 - t0, 2, n_hyp, ids.shape[1], dtype=torch.float64)
    psi, edge = ctc_prefix_window(label_rows(logp), blank_cum, valid, utt,
                                  ids if partial else None, r_sum, r_blank, last, blank, first,
                                  t0, t1, LOGZERO, out=out, chunk_elements=200)  # label chunks
    rn, rb = out[:, 0], out[:, 1]
    want_rn, want_rb, want_psi = reference_window(logp, valid, utt, ids, r_sum, r_blank, last,
                                                  blank, first, t0, t1)
    want_edge = torch.logaddexp(want_rn[-1], want_rb[-1])
    for got, want in ((rn, want_rn), (rb, want_rb), (psi, want_psi), (edge, want_edge)):
        live = want > LOGZERO / 2
        assert torch.equal(live, got > LOGZERO / 2)
        assert torch.allclose(got[live], want[live], rtol=1e-12, atol=1e-9)
