"""CTC prefix scores for a batch of hypotheses, every frame at once.

The CTC prefix score of a label sequence ``g + c`` (Watanabe et al. 2017, Algorithm 2) runs
two forward variables over the frames ``t``: ``rn_t`` (``g + c`` read by frame ``t``, its last
frame on ``c``) and ``rb_t`` (the same, last frame on blank).  In the log semiring:

    rn_t = logaddexp(rn_{t-1}, phi_{t-1}) + x_t(c)
    rb_t = logaddexp(rn_{t-1}, rb_{t-1}) + x_t(blank)

where ``phi_t`` is what ``g`` has reached by frame ``t`` (``rn + rb`` of ``g``, or only its
``rb`` when ``c`` repeats the last label of ``g``).  Each is a first-order linear recurrence
``h_i = logaddexp(h_{i-1}, d_{i-1}) + a_i``; with ``s_i = a_1 + ... + a_i`` its solution is

    h_i = s_i + logcumsumexp(h_0 - s_0, d_0 - s_0, ..., d_{i-1} - s_{i-1})_i

(:func:`log_linear_scan`): one cumulative sum and one ``logcumsumexp`` over the frames instead of
a Python step per frame, so a beam step costs a fixed number of tensor operations whatever the
number of frames.  ``s_i`` is a sum of log-probabilities over up to thousands of frames (about
-1e5 for a label absent from a minute of audio: 1,500 frames at down to -70) and the solution is
a difference of two such sums: float32 would leave about 1e-2 of it, so the cumulative terms are
float64 (1e-11).

ESPnet's convention for padded frames of a batch (label ``logzero``, blank 0) is kept; they are
left out of the cumulative sums (a ``logzero`` per padded frame would swamp them) and ``rn`` is
``logzero`` there (the recursion gives ``logzero`` plus terms of no weight), except for the blank
label, which a padded frame holds with certainty.
"""

from __future__ import annotations

import torch

WORK_DTYPE = torch.float64
# elements of one (frames, hypotheses, labels) float64 work tensor; larger label sets
# (scoring every token) are split so the few temporaries stay near 32 MiB each
CHUNK_ELEMENTS = 1 << 22


MIN_BLOCKED_STEPS = 64  # shorter scans: PyTorch's kernel is as fast as the Python loop


def _block(steps: int) -> int:
    """Block length of the CPU scan: about sqrt(steps), so the loop inside the blocks and the
    scan over the block totals are both short."""
    return max(8, int(steps ** 0.5 + 0.5))


def _padded_steps(steps: int, device) -> int:
    """Steps of the buffer :func:`logcumsumexp_` works in (a whole number of blocks on a CPU)."""
    if device.type != "cpu" or steps <= MIN_BLOCKED_STEPS:
        return steps
    block = _block(steps)
    return -(-steps // block) * block


def logcumsumexp_(buf: torch.Tensor, steps: int) -> torch.Tensor:
    """``torch.logcumsumexp(buf[:steps], 0)``, in place where it can be.

    On a CPU ``buf`` holds :func:`_padded_steps` rows (those past ``steps`` are overwritten) and
    the scan runs in two levels: a short loop of ``logaddexp`` inside blocks of about
    sqrt(steps) steps, ``logcumsumexp`` over the block totals, one ``logaddexp`` to carry them
    in.  The same values to rounding in a quarter of the time of PyTorch's CPU kernel (about 40
    ns an element: two transcendental functions per step, not vectorised).  Elsewhere
    PyTorch's own kernel (one launch)."""
    if buf.device.type != "cpu" or steps <= MIN_BLOCKED_STEPS:
        return torch.logcumsumexp(buf[:steps], 0)
    block = _block(steps)
    buf[steps:] = float("-inf")
    blocks = buf.view(buf.shape[0] // block, block, *buf.shape[1:])
    for k in range(1, block):
        torch.logaddexp(blocks[:, k - 1], blocks[:, k], out=blocks[:, k])
    carry = torch.logcumsumexp(blocks[:-1, -1], 0)  # everything before each later block
    torch.logaddexp(blocks[1:], carry.unsqueeze(1), out=blocks[1:])
    return buf[:steps]


def logcumsumexp(x: torch.Tensor) -> torch.Tensor:
    """``torch.logcumsumexp(x, 0)`` (see :func:`logcumsumexp_`)."""
    buf = x.new_empty((_padded_steps(x.shape[0], x.device), *x.shape[1:]))
    buf[:x.shape[0]] = x
    return logcumsumexp_(buf, x.shape[0])


def log_linear_scan(h0: torch.Tensor, drive: torch.Tensor, cum: torch.Tensor) -> torch.Tensor:
    """Every ``h_i`` of ``h_i = logaddexp(h_{i-1}, drive_{i-1}) + (cum_i - cum_{i-1})``.

    h0 (...) is ``h`` at step 0; drive (W, ...) and cum (W, ...) broadcast to drive's shape,
    h0 to one step of it; ``cum`` holds the running sums of the per-step log-factors (any
    origin).  Returns (W, ...) with ``h[0] == h0``.  Computed in the dtype of the inputs (use
    float64: see the module docstring)."""
    steps = drive.shape[0]
    terms = drive.new_empty((_padded_steps(steps, drive.device), *drive.shape[1:]))
    torch.sub(h0, cum[0], out=terms[0])
    torch.sub(drive[:-1], cum[:-1], out=terms[1:steps])
    return logcumsumexp_(terms, steps).add_(cum)


def label_rows(logp: torch.Tensor) -> torch.Tensor:
    """(T, B, O) log-posteriors as (B * O, T): row ``b * O + c`` holds label ``c`` of utterance
    ``b`` over the frames, so the labels a step scores are gathered as whole rows (on a CPU 20x
    faster than gathering columns of the frame-major layout)."""
    return logp.permute(1, 2, 0).reshape(-1, logp.shape[0]).contiguous()


def ctc_prefix_window(rows: torch.Tensor, blank_cum: torch.Tensor, valid: torch.Tensor | None,
                      utt: torch.Tensor, ids: torch.Tensor | None, r_sum: torch.Tensor,
                      r_blank: torch.Tensor, last: torch.Tensor, blank: int, first: bool,
                      t0: int, t1: int, logzero: float, out: torch.Tensor,
                      chunk_elements: int = CHUNK_ELEMENTS):
    """Forward variables and prefix scores of ``g + c`` for every hypothesis ``g`` and label ``c``
    over the frames ``t0 .. t1-1``.

    rows (B * O, T)     log-posteriors of B utterances over O labels, :func:`label_rows`
                        (padded frames: labels ``logzero``, blank 0)
    blank_cum (T, B)    float64 running sum of the blank's log-posterior over frames
    valid (T, B)        True on the frames inside each utterance; None if the window holds no
                        padded frame
    utt (N,)            utterance of each hypothesis
    ids (N, S)          the labels to score per hypothesis, or None for all O
    r_sum, r_blank (T, N)  log(rn + rb) and log(rb) of each hypothesis ``g`` at every frame
    last (N,)           the last label of each ``g``
    blank               the blank's id (its padded frames are certain, not impossible)
    first               ``g`` is empty, so ``c`` may start at frame ``t0`` (which must be 0);
                        else ``rn`` and ``rb`` are ``logzero`` at ``t0``
    out (t1 - t0, 2, N, S)  receives ``rn`` (``[:, 0]``) and ``rb`` (``[:, 1]``) on frames
                        t0 .. t1-1, in its own dtype
    ``phi`` and ``psi`` (sums, not differences of sums) are computed in the dtype of ``rows``,
    the forward recursions in float64.  Returns the log prefix probability ``psi`` (N, S):
    ``rn`` at ``t0`` plus the mass entering ``c`` at every frame after it; and
    ``log(rn + rb)`` at frame t1-1 (N, S), both float64.
    """
    n_all = rows.shape[0] // blank_cum.shape[1]
    n_hyp, n_lab = utt.numel(), (n_all if ids is None else ids.shape[1])
    width = t1 - t0
    offsets = (utt * n_all).unsqueeze(1)  # (N, 1)
    b_cum = blank_cum[t0:t1].index_select(1, utt).unsqueeze(2)  # (W, N, 1)
    # what g has reached, as c's predecessor: all of it, or its blank-ending part where c
    # repeats g's last label (CTC reads a repeated label only across a blank)
    sum_w = r_sum[t0:t1].to(rows.dtype).unsqueeze(2)
    blank_w = r_blank[t0:t1].to(rows.dtype).unsqueeze(2)
    win_valid = None if valid is None else valid[t0:t1].index_select(1, utt).unsqueeze(2)
    step = max(1, chunk_elements // max(1, width * n_hyp))
    psis, edges = [], []
    for lo in range(0, n_lab, step):
        hi = min(n_lab, lo + step)
        labels = (torch.arange(lo, hi, device=rows.device).expand(n_hyp, -1) if ids is None
                  else ids[:, lo:hi])  # (N, s)
        xc = rows.index_select(0, (offsets + labels).reshape(-1))[:, t0:t1]
        xc = xc.t().contiguous().view(width, n_hyp, -1)  # (W, N, s)
        # phi: sum_w everywhere but at c = last label (at most one column per hypothesis),
        # written through a spare column for the hypotheses whose last label is not scored
        repeat = labels == last.unsqueeze(1)
        column = torch.where(repeat.any(1), repeat.to(torch.int8).argmax(1), hi - lo)
        phi = sum_w.expand(-1, -1, hi - lo + 1).contiguous()
        phi.scatter_(2, column.view(1, -1, 1).expand(width, -1, 1), blank_w)
        phi = phi[:, :, :-1]
        h0 = xc[0] if first else torch.full_like(xc[0], logzero)
        # psi is a sum, not a difference of sums: the inputs' precision does
        entering = torch.logsumexp(phi[:-1] + xc[1:], 0)
        psis.append(torch.logaddexp(h0, entering).to(WORK_DTYPE))
        if win_valid is None:
            inc = xc.to(WORK_DTYPE, copy=True)
        else:
            # padded frames add no decay (no logzero in the running sum) and rn is logzero
            # there, except for c = blank, which a padded frame holds with certainty
            dead = ~(win_valid | (labels == blank).unsqueeze(0))
            inc = xc.to(WORK_DTYPE, copy=True).masked_fill_(dead, 0.0)
        inc[0] = 0.0
        rn = log_linear_scan(h0, phi, inc.cumsum_(0))
        if win_valid is not None:
            rn.masked_fill_(dead, logzero)
        rb = log_linear_scan(torch.full_like(h0, logzero), rn, b_cum)
        out[:, 0, :, lo:hi] = rn
        out[:, 1, :, lo:hi] = rb
        edges.append(torch.logaddexp(rn[-1], rb[-1]))
    if len(psis) == 1:
        return psis[0], edges[0]
    return torch.cat(psis, 1), torch.cat(edges, 1)
