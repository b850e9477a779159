"""Driving a CTC prefix scorer through beam steps as ESPnet's BatchBeamSearch does, and
comparing log-probabilities: shared by the CPU tests (tests/integration) and the GPU tests."""

import torch

LOGZERO = -1e10


def random_logp(n_utt, frames, n_lab, seed, dtype=torch.float64, peaky=False, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_utt, frames, n_lab, generator=gen, dtype=torch.float64) * 3
    if peaky:  # mostly blank, as a trained CTC head
        logits = logits * 2
        logits[..., 0] += 6
    return torch.log_softmax(logits, -1).to(device=device, dtype=dtype)


def run_steps(cls, logp, lengths, hyps, n_scored, steps, margin, seed=1):
    """Drive a scorer as BatchBeamSearch does (score, then reorder the states to the chosen
    (hypothesis, label) pairs), with random choices among the scored labels.  Returns each
    step's (scores, state)."""
    n_utt, _, n_lab = logp.shape
    eos = n_lab - 1
    device = logp.device
    scorer = cls(logp.clone(), lengths, 0, eos, margin=margin)
    gen = torch.Generator().manual_seed(seed)
    yseq = torch.full((n_utt * hyps, 1), eos, device=device)
    state, out = None, []
    for _ in range(steps):
        ids = None
        if n_scored:
            ids = torch.stack([torch.randperm(n_lab - 2, generator=gen)[:n_scored] + 1
                               for _ in range(n_utt * hyps)]).to(device)
        scores, new_state = scorer(yseq, state, ids)
        out.append((scores, new_state))
        hyp = torch.randint(0, hyps, (n_utt, hyps), generator=gen)
        if ids is None:
            label = torch.randint(1, n_lab - 1, (n_utt, hyps), generator=gen)
        else:
            pick = torch.randint(0, n_scored, (n_utt, hyps), generator=gen)
            rows = hyp + (torch.arange(n_utt) * hyps).unsqueeze(1)
            label = ids.cpu()[rows, pick]
        best = hyp * n_lab + label  # (B, H): h * O + c, as BatchBeamSearch hands them
        state = scorer.index_select_state(new_state, best.to(device))
        rows = (hyp + (torch.arange(n_utt) * hyps).unsqueeze(1)).view(-1)
        yseq = torch.cat((yseq[rows.to(device)], label.view(-1, 1).to(device)), 1)
        out[-1] += (state,)
    return out


def assert_log_close(got, want, rtol, atol):
    """Equal where ESPnet's value is a probability; both at most logzero / 2 (no probability)
    elsewhere (ESPnet's padded frames read -1e10 plus whatever the recursion adds)."""
    live = want > LOGZERO / 2
    assert torch.equal(live, got > LOGZERO / 2)
    assert torch.allclose(got[live], want[live], rtol=rtol, atol=atol), \
        (got[live] - want[live]).abs().max()


CASES = [  # (utterances, frames, lengths, hypotheses, scored labels, margin)
    (1, 40, [40], 1, 0, 0),
    (1, 70, [70], 4, 5, 0),
    (3, 70, [70, 33, 51], 3, 5, 0),
    (3, 70, [70, 33, 51], 3, 0, 0),
    (2, 90, [90, 64], 4, 6, 6),
    (2, 90, [90, 64], 2, 0, 6),
    (1, 12, [12], 3, 4, 0),  # more steps than frames: prefixes longer than the utterance
]


def float32_errors(espnet_cls, ours_cls, n_scored, n_lab, device="cpu"):
    """Largest absolute error in float32 of ESPnet's scorer and ours against ESPnet's in float64
    (600 frames, 6 hypotheses, 6 steps), and the largest |log_psi|: (ours, espnet, scale)."""
    logp = random_logp(1, 600, n_lab, seed=5, peaky=True, device=device)
    lengths = torch.tensor([600])
    exact = run_steps(espnet_cls, logp, lengths, 6, n_scored, 6, 0)

    def worst(cls):
        got = run_steps(cls, logp.float(), lengths, 6, n_scored, 6, 0)
        err = 0.0
        for (s, state, _), (ref, ref_state, _) in zip(got, exact):
            for mine, want in ((s, ref), (state[1], ref_state[1])):
                live = want > LOGZERO / 2
                err = max(err, float((mine.double() - want)[live].abs().max()))
        return err

    scale = max(float(st[1][st[1] > LOGZERO / 2].abs().max()) for _, st, _ in exact)
    return worst(ours_cls), worst(espnet_cls), scale
