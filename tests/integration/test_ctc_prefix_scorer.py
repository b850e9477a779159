"""The vectorised CTC prefix scorer (integration/ctc_prefix.py) against ESPnet's
CTCPrefixScoreTH: the same scores and states step by step, and the same n-best through
ESPnet's BatchBeamSearch; which searches use it (ESPNET_MAMBA_CTC_PREFIX)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ctc_prefix_checks import (
    CASES,
    assert_log_close,
    float32_errors,
    random_logp,
    run_steps,
)
from espnet2.asr.ctc import CTC
from espnet2.legacy.nets.batch_beam_search import BatchBeamSearch
from espnet2.legacy.nets.ctc_prefix_score import CTCPrefixScoreTH
from espnet2.legacy.nets.scorers.ctc import CTCPrefixScorer
from model_checks import VOCAB, tiny_decoder

from espnet_mamba.integration.ctc_prefix import ENV_VAR, VectorizedCTCPrefixScoreTH


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}T{}H{}S{}m{}".format(*c[:2], *c[3:]))
def test_scores_and_states_equal_espnet_float64(case):
    """Float64 on both sides: scores, forward variables r, log_psi, windows (f_min, f_max),
    the partial-scoring id map and the states after index_select_state equal ESPnet's to
    1e-9 (the two differ only in the order of float64 additions)."""
    n_utt, frames, lengths, hyps, n_scored, margin = case
    logp = random_logp(n_utt, frames, 21, seed=frames + hyps)
    lengths = torch.tensor(lengths)
    steps = 15 if frames == 12 else 8
    ours = run_steps(VectorizedCTCPrefixScoreTH, logp, lengths, hyps, n_scored, steps, margin)
    theirs = run_steps(CTCPrefixScoreTH, logp, lengths, hyps, n_scored, steps, margin)
    for (s1, st1, sel1), (s2, st2, sel2) in zip(ours, theirs):
        assert_log_close(s1, s2, 1e-12, 1e-9)
        r1, psi1, fmin1, fmax1, map1 = st1
        r2, psi2, fmin2, fmax2, map2 = st2
        assert (fmin1, fmax1) == (fmin2, fmax2)
        assert (map1 is None and map2 is None) or torch.equal(map1, map2)
        assert_log_close(r1, r2, 1e-12, 1e-9)
        assert_log_close(psi1, psi2, 1e-12, 1e-9)
        assert_log_close(sel1[0], sel2[0], 1e-12, 1e-9)
        assert_log_close(sel1[1], sel2[1], 1e-12, 1e-9)


@pytest.mark.parametrize("n_scored,n_lab", [(10, 200), (0, 40)])
def test_float32_error_within_espnets_own(n_scored, n_lab):
    """Float32, 600 frames of peaky log-probs, compared with ESPnet's scorer in float64 (exact to
    ~1e-12).  Scores are log-probabilities, so an absolute error e is a relative error e of the
    probability.  Float32 holds a log-probability of magnitude |v| to |v| * 6e-8 (1.2e-4 at the
    -2000 these prefixes reach), and both scorers keep their states in float32 between tokens:
    ours must stay within 16 such units of the largest |log_psi| and no worse than ESPnet's own
    float32 error.  (Ours computes the cumulative terms in float64 inside, so only its inputs
    and stored states round; ESPnet's recursion rounds at every frame, 5x more here.)"""
    ours, espnet, scale = float32_errors(CTCPrefixScoreTH, VectorizedCTCPrefixScoreTH, n_scored,
                                         n_lab)
    print(f"float32 max abs error: ours {ours:.2e}, ESPnet's {espnet:.2e}, |log_psi| {scale:.0f}")
    assert ours <= 16 * torch.finfo(torch.float32).eps * scale and ours <= espnet, \
        (ours, espnet, scale)


def ctc_head(seed=3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    ctc = CTC(VOCAB, 32).to(dtype=dtype)
    with torch.no_grad():
        for p in ctc.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.5)
    return ctc.eval()


def decode(x, x_lengths, decoder, margin, pre_beam, beam=4):
    """n-best of ESPnet's BatchBeamSearch, decoder + CTC 0.3, and the CTC scorer it used."""
    eos = VOCAB - 1
    ctc = CTCPrefixScorer(ctc_head(), eos, window_margin=margin)
    search = BatchBeamSearch(scorers={"decoder": decoder, "ctc": ctc},
                             weights={"decoder": 0.7, "ctc": 0.3}, beam_size=beam,
                             vocab_size=VOCAB, sos=eos, eos=eos, token_list=None,
                             pre_beam_ratio=pre_beam / beam,
                             pre_beam_score_key="full")
    search.eval()
    with torch.no_grad():
        hyps = search(x=x, maxlenratio=0.0, minlenratio=0.0, x_lengths=x_lengths)
    return hyps, ctc.impl


def nbest(hyps):
    if hyps and isinstance(hyps[0], list):
        return [nbest(h) for h in hyps]
    return [(h.yseq.tolist(), float(h.score), float(h.scores["ctc"])) for h in hyps]


def assert_same_nbest(a, b):
    if a and isinstance(a[0], list):
        for x, y in zip(a, b, strict=True):
            assert_same_nbest(x, y)
        return
    assert [h[0] for h in a] == [h[0] for h in b]
    for (_, s1, c1), (_, s2, c2) in zip(a, b):
        assert s1 == pytest.approx(s2, abs=1e-8) and c1 == pytest.approx(c2, abs=1e-8)


@pytest.mark.parametrize("margin,pre_beam", [(0, 6), (0, VOCAB), (5, 6)],
                         ids=["exact-partial", "exact-full", "window-partial"])
@pytest.mark.parametrize("batch", [False, True], ids=["one", "padded-batch"])
def test_batch_beam_search_same_nbest(monkeypatch, margin, pre_beam, batch):
    """A whole BatchBeamSearch decode (tiny samba_asr decoder + CTC 0.3, float64) gives the same
    n-best (token sequences, total and CTC scores) with our scorer as with ESPnet's: one
    utterance, and two padded utterances decoded together."""
    torch.manual_seed(0)
    decoder = tiny_decoder("samba_asr", "mamba")
    if batch:
        x = torch.randn(2, 30, 32, dtype=torch.float64)
        x_lengths = torch.tensor([30, 19])
    else:
        x, x_lengths = torch.randn(30, 32, dtype=torch.float64), None
    results = {}
    for mode in ("espnet", "auto"):
        monkeypatch.setenv(ENV_VAR, mode)
        hyps, impl = decode(x, x_lengths, decoder, margin, pre_beam)
        used = type(impl)
        assert used is (VectorizedCTCPrefixScoreTH if mode == "auto" else CTCPrefixScoreTH)
        results[mode] = nbest(hyps)
    assert_same_nbest(results["auto"], results["espnet"])
    assert len(results["auto"]) > 0


def test_which_searches_use_it(monkeypatch):
    """auto: searches whose decoder is ours; all: every search (also ESPnet's Transformer
    decoder); espnet: none; another value: an error naming the variable and the choices."""
    from espnet2.asr.decoder.transformer_decoder import TransformerDecoder

    ours = tiny_decoder("samba_asr", "mamba")
    theirs = TransformerDecoder(VOCAB, 32, attention_heads=2, linear_units=32,
                                num_blocks=1).double().eval()
    x = torch.randn(20, 32, dtype=torch.float64)
    expect = {("auto", "ours"): True, ("auto", "theirs"): False, ("all", "ours"): True,
              ("all", "theirs"): True, ("espnet", "ours"): False, ("espnet", "theirs"): False}
    for (mode, which), vectorised in expect.items():
        monkeypatch.setenv(ENV_VAR, mode)
        _, impl = decode(x, None, ours if which == "ours" else theirs, 0, 6, beam=2)
        assert (type(impl) is VectorizedCTCPrefixScoreTH) == vectorised, (mode, which)
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"{ENV_VAR}='fast': must be one of auto, all, espnet"):
        decode(x, None, ours, 0, 6, beam=2)


def test_hook_patches_and_disabled_hook_does_not():
    """With the import hook ESPnet's CTCPrefixScorer and BeamSearch carry our wrappers (each
    once); with ESPNET_MAMBA_DISABLE_HOOK=1 they are ESPnet's own."""
    from espnet2.legacy.nets.beam_search import BeamSearch

    assert getattr(CTCPrefixScorer.batch_init_state, "_espnet_mamba_vectorized", False)
    assert getattr(BeamSearch.__init__, "_espnet_mamba_ctc_marking", False)
    code = ("from espnet2.legacy.nets.scorers.ctc import CTCPrefixScorer\n"
            "from espnet2.legacy.nets.beam_search import BeamSearch\n"
            "print(hasattr(CTCPrefixScorer.batch_init_state, '_espnet_mamba_vectorized'),"
            " hasattr(BeamSearch.__init__, '_espnet_mamba_ctc_marking'))")
    env = dict(os.environ, ESPNET_MAMBA_DISABLE_HOOK="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_stock_asr_inference_uses_it(tmp_path, monkeypatch):
    """``python -m espnet2.bin.asr_inference`` (beam 3, CTC 0.3, its default window) on a tiny
    untrained samba_asr model: the log names our scorer, and the 1-best texts equal
    Speech2Text's with ESPnet's scorer (ESPNET_MAMBA_CTC_PREFIX=espnet)."""
    import numpy as np
    import soundfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import ctc_prefix_decode

    config, model, _ = ctc_prefix_decode.build_model_files(tmp_path, "samba_asr", 40, tiny=True)
    scp = tmp_path / "wav.scp"
    lines = []
    for i, seconds in enumerate((2.0, 3.5)):
        wav = tmp_path / f"u{i}.wav"
        audio = np.random.default_rng(i).standard_normal(int(16000 * seconds)) * 0.1
        soundfile.write(str(wav), audio.astype(np.float32), 16000)
        lines.append(f"u{i} {wav}\n")
    scp.write_text("".join(lines))
    out = tmp_path / "decode"
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    proc = subprocess.run(
        [sys.executable, "-m", "espnet2.bin.asr_inference", "--ngpu", "0", "--beam_size", "3",
         "--ctc_weight", "0.3", "--maxlenratio", "0.3", "--asr_train_config", str(config),
         "--asr_model_file", str(model), "--data_path_and_name_and_type",
         f"{scp},speech,sound", "--output_dir", str(out)],
        env=env, capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CTC prefix scores: espnet_mamba's VectorizedCTCPrefixScoreTH" in proc.stderr
    got = dict((line.split(maxsplit=1) + [""])[:2]
               for line in (out / "1best_recog" / "text").read_text().splitlines())

    from espnet2.bin.asr_inference import Speech2Text

    monkeypatch.setenv(ENV_VAR, "espnet")
    s2t = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu",
                      beam_size=3, ctc_weight=0.3, maxlenratio=0.3, nbest=1)
    for line in lines:
        utt, wav = line.split()
        audio, _ = soundfile.read(wav, dtype="float32")
        with torch.no_grad():
            want = s2t(audio)[0][0]
        assert type(s2t.beam_search.scorers["ctc"].impl) is CTCPrefixScoreTH
        assert got[utt].strip() == want.strip(), (utt, got[utt], want)
