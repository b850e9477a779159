"""Checks of the encoders/decoders, written once and run on CPU (tests/) and GPU (tests/gpu/)."""

import contextlib

import torch
from espnet2.asr.ctc import CTC
from espnet2.legacy.nets.batch_beam_search import BatchBeamSearch
from espnet2.legacy.nets.beam_search import BeamSearch
from espnet2.legacy.nets.scorers.ctc import CTCPrefixScorer
from tensor_checks import grad_error, projection_loss, rel_err

from espnet_mamba.decoders.samba_asr import SambaASRDecoder
from espnet_mamba.decoders.speech_mamba import SpeechMambaDecoder
from espnet_mamba.encoders.samba_asr import SambaASREncoder
from espnet_mamba.encoders.speech_mamba import SpeechMambaEncoder

ENCODERS = {"samba_asr": SambaASREncoder, "speech_mamba": SpeechMambaEncoder}
DECODERS = {"samba_asr": SambaASRDecoder, "speech_mamba": SpeechMambaDecoder}
MIXER_CONF = {"mamba": {}, "mamba2": {"headdim": 16}}
VOCAB = 13


def tiny_decoder(name, mixer, d=32, device="cpu", dtype=torch.float64, **kw):
    dec = DECODERS[name](VOCAB, d, num_blocks=2, mixer=mixer, d_state=8,
                         mixer_conf=MIXER_CONF[mixer], **kw)
    return dec.to(device=device, dtype=dtype).eval()


def teacher_forcing_vs_steps(dec, device="cpu", dtype=torch.float64):
    """Max abs error between teacher-forced log-probs and batch_score step by step."""
    hs = torch.randn(3, 15, 32, device=device, dtype=dtype)
    hl = torch.tensor([15, 9, 4], device=device)
    ys = torch.randint(0, VOCAB, (3, 8), device=device)
    yl = torch.tensor([8, 6, 2], device=device)
    with torch.no_grad():
        logp = torch.log_softmax(dec(hs, hl, ys, yl)[0].to(torch.float64), -1)
        worst = 0.0
        for i in range(3):
            x = hs[i, :hl[i]]
            states = [dec.batch_init_state(x)] * 2  # two hypotheses sharing the start state
            for t in range(int(yl[i])):
                prefix = ys[i, :t + 1].expand(2, -1)
                step_logp, states = dec.batch_score(prefix, states, x.expand(2, -1, -1))
                worst = max(worst, (step_logp.double() - logp[i, t]).abs().max().item())
    return worst


def run_beam_searches(dec, ctc_weight, device="cpu", dtype=torch.float64, beam=4, seed=0):
    """n-best lists of ESPnet's BeamSearch and BatchBeamSearch on one random utterance."""
    eos = VOCAB - 1
    gen = torch.Generator().manual_seed(seed)
    ctc = CTC(VOCAB, 32).to(dtype=dtype)
    with torch.no_grad():
        for p in ctc.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype) * 0.3)
    ctc = ctc.to(device).eval()
    x = torch.randn(12, 32, generator=gen, dtype=dtype).to(device)
    scorers = {"decoder": dec}
    weights = {"decoder": 1.0 - ctc_weight}
    if ctc_weight > 0:
        scorers["ctc"] = CTCPrefixScorer(ctc, eos)
        weights["ctc"] = ctc_weight
    results = []
    for cls in (BeamSearch, BatchBeamSearch):
        search = cls(scorers=scorers, weights=weights, beam_size=beam, vocab_size=VOCAB,
                     sos=eos, eos=eos, token_list=None, pre_beam_score_key="full")
        search.to(device=device, dtype=dtype).eval()
        with torch.no_grad():
            results.append(search(x=x, maxlenratio=0.0, minlenratio=0.0))
    return x, results


def teacher_forced_score(dec, x, yseq):
    """Sum of the decoder's teacher-forced log-probs of yseq[1:] given yseq[:-1]."""
    ys = yseq[None, :-1]
    with torch.no_grad():
        logits, _ = dec(x[None], torch.tensor([x.shape[0]], device=x.device), ys,
                        torch.tensor([ys.shape[1]], device=x.device))
        logp = torch.log_softmax(logits.double(), -1)[0]
    return logp.gather(1, yseq[1:, None]).sum().item()


def state_numel(state):
    if isinstance(state, torch.Tensor):
        return state.numel()
    if state is None:
        return 0
    if hasattr(state, "keys_values"):  # shared speech memory: size of the utterance
        return sum(k.numel() + v.numel() for k, v in state.keys_values)
    return sum(state_numel(s) for s in state)


def decoder_padding_error(dec, device="cpu", dtype=torch.float64):
    hs = torch.randn(3, 14, 32, device=device, dtype=dtype)
    hl = torch.tensor([14, 8, 3], device=device)
    ys = torch.randint(0, VOCAB, (3, 7), device=device)
    yl = torch.tensor([7, 4, 1], device=device)
    with torch.no_grad():
        batch = dec(hs, hl, ys, yl)[0]
        return max(rel_err(batch[i, :yl[i]],
                           dec(hs[i:i + 1, :hl[i]], hl[i:i + 1], ys[i:i + 1, :yl[i]],
                               yl[i:i + 1])[0][0]) for i in range(3))


def encoder_padding_error(enc, idim=20, device="cpu", dtype=torch.float64):
    x = torch.randn(3, 60, idim, device=device, dtype=dtype)
    il = torch.tensor([60, 37, 16], device=device)
    with torch.no_grad():
        y, ol, _ = enc(x, il)
        return max(rel_err(y[i, :ol[i]], enc(x[i:i + 1, :il[i]], il[i:i + 1])[0][0])
                   for i in range(3))


def packed_vs_padded_error(name, mixer, device="cpu", dtype=torch.float64, backend=None,
                           bidirectional=True, idim=20, input_layer="conv2d",
                           packed_mixer="fused"):
    """Rel. error of outputs and of every parameter's gradient: ``pack_sequences`` on (the
    Mamba2 mixers' packed rows run by ``packed_mixer``) vs off, same weights."""
    return variant_error(name, mixer, {"pack_sequences": True, "packed_mixer": packed_mixer},
                         device, dtype, backend, bidirectional, idim, input_layer)


def variant_error(name, mixer, variant: dict, device="cpu", dtype=torch.float64, backend=None,
                  bidirectional=True, idim=20, input_layer="conv2d"):
    """Rel. error of outputs and of every parameter's gradient: an encoder with the options
    ``variant`` vs one without, same weights (loaded strictly: the same state-dict keys)."""
    kw = dict(output_size=64, num_blocks=2, mixer=mixer, d_state=16, dropout_rate=0.0,
              mixer_conf=MIXER_CONF[mixer], bidirectional=bidirectional, backend=backend,
              input_layer=input_layer)
    base = ENCODERS[name](idim, **kw)
    other = ENCODERS[name](idim, **variant, **kw)
    other.load_state_dict(base.state_dict())
    x = torch.randn(4, 70, idim, device=device, dtype=dtype)
    il = torch.tensor([70, 23, 51, 9], device=device)
    outs = []
    for enc in (base, other):
        enc.to(device=device, dtype=dtype).train()
        y, ol, _ = enc(x, il)
        if enc is other:  # the same frames out, counted alike
            assert torch.equal(ol, outs[0][2]) and y.shape == outs[0][0].shape
        mask = (torch.arange(y.shape[1], device=device)[None] < ol[:, None])[..., None]
        projection_loss(y * mask).backward()
        outs.append((y * mask, {n: p.grad for n, p in enc.named_parameters()}, ol))
    (y_a, grads_a, _), (y_b, grads_b, _) = outs
    return max(rel_err(y_a, y_b), grad_error(grads_a, grads_b, floor=1e-3)[0])


def tiny_encoder(name, mixer="mamba", idim=20, **kw):
    """One block of width 16, d_state 4 (speech_mamba: 2 attention heads)."""
    extra = {"attention_heads": 2} if name == "speech_mamba" else {}
    return ENCODERS[name](idim, output_size=16, num_blocks=1, mixer=mixer, d_state=4,
                          mixer_conf=MIXER_CONF[mixer], **extra, **kw)


def ssm_parameters(model):
    """The parameters that must stay fp32 (mamba-ssm keeps them fp32 too): A_log, D and the dt
    bias (Mamba ``dt_proj.bias``, Mamba2 ``dt_bias``)."""
    return {n: p for n, p in model.named_parameters()
            if n.rsplit(".", 1)[-1] in ("A_log", "D", "dt_bias") or n.endswith("dt_proj.bias")}


def check_fp32_ssm(model, expected_per_mixer):
    """After a backward pass under autocast: each mixer's ``expected_per_mixer`` SSM parameters
    and their gradients are fp32 and finite, A_log got a gradient, every gradient is finite."""
    params = ssm_parameters(model)
    mixers = sum(1 for n in params if n.endswith("A_log"))
    assert mixers > 0 and len(params) == expected_per_mixer * mixers, sorted(params)
    for n, p in params.items():
        assert p.dtype == torch.float32, (n, p.dtype)
        assert p.grad is not None and p.grad.dtype == torch.float32, (n, p.grad)
        assert torch.isfinite(p.grad).all(), n
    assert any(p.grad.abs().sum() > 0 for n, p in params.items() if n.endswith("A_log"))
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


def graphed_vs_eager_steps(dec, context=None):
    """Two utterances' beam-search steps of ``dec`` (on CUDA) with its decoding graphs and
    eagerly, rows changing (1, 4, 2 hypotheses); asserts equal scores (1e-3 relative) and
    returns the decoder's ``step_graphs`` for the caller's checks of the captures."""
    from espnet_mamba.modules.execution import set_execution

    for utt in range(2):
        x = torch.randn(30 + 7 * utt, dec.output_layer.in_features, device="cuda")
        with torch.no_grad(), (context or contextlib.nullcontext()):
            states_g = states_e = [dec.batch_init_state(x)]
            for rows in (1, 1, 4, 4, 4, 2, 2):
                ys = torch.randint(0, dec.output_layer.out_features, (rows, 3), device="cuda")
                pick = torch.randint(0, len(states_g), (rows,)).tolist()
                set_execution(dec, cuda_graphs=True)
                logp_g, out_g = dec.batch_score(ys, [states_g[i] for i in pick], x)
                set_execution(dec, cuda_graphs=False)
                logp_e, out_e = dec.batch_score(ys, [states_e[i] for i in pick], x)
                assert (logp_g - logp_e).abs().max() <= 1e-3 * logp_e.abs().max()
                states_g = [dec.select_state(out_g, i) for i in range(rows)]
                states_e = [dec.select_state(out_e, i) for i in range(rows)]
    return dec.step_graphs
