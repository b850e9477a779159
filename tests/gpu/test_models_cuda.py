"""Decoders on the CUDA kernels: teacher forcing vs beam-search steps, and the two ESPnet
searches, with the same checks as the CPU tests (fp32 tolerances)."""

import pytest
import torch

from model_checks import (
    ENCODERS, MIXER_CONF, encoder_padding_error, packed_vs_padded_error, run_beam_searches,
    teacher_forcing_vs_steps, tiny_decoder,
)

pytestmark = pytest.mark.gpu
PAIRS = [(name, mixer) for name in ("samba_asr", "speech_mamba") for mixer in MIXER_CONF]


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_teacher_forcing_equals_batch_score_cuda(name, mixer):
    dec = tiny_decoder(name, mixer, device="cuda", dtype=torch.float32, backend="cuda")
    assert teacher_forcing_vs_steps(dec, device="cuda", dtype=torch.float32) < 1e-4


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_beam_searches_agree_cuda(name, mixer):
    dec = tiny_decoder(name, mixer, device="cuda", dtype=torch.float32, backend="cuda")
    _, (single, batched) = run_beam_searches(dec, 0.0, device="cuda", dtype=torch.float32)
    assert [h.yseq.tolist() for h in single] == [h.yseq.tolist() for h in batched]


@pytest.mark.parametrize("name,mixer", PAIRS)
def test_encoder_padding_cuda(name, mixer):
    enc = ENCODERS[name](20, output_size=64, num_blocks=2, mixer=mixer, d_state=16,
                         mixer_conf=MIXER_CONF[mixer], backend="cuda").cuda().eval()
    assert encoder_padding_error(enc, device="cuda", dtype=torch.float32) < 1e-4


NATIVE = pytest.param(True, marks=pytest.mark.xfail(
    strict=True, reason="seq_idx path: 0.4-2% off the padded result on the H100 (2026-11-22); "
    "espnet_mamba/modules/mamba2.py NATIVE_SEQ_IDX"))


@pytest.mark.parametrize("native", [False, NATIVE])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_packed_encoder_cuda(name, bidirectional, native, monkeypatch):
    """Packed (pack_sequences) == the padded batch on CUDA: as shipped (packed Mamba2 layers
    run padded) and through the fused kernel's seq_idx (NATIVE_SEQ_IDX)."""
    from espnet_mamba.modules import mamba2
    monkeypatch.setattr(mamba2, "NATIVE_SEQ_IDX", native)
    err = packed_vs_padded_error(name, "mamba2", device="cuda", dtype=torch.float32,
                                 backend="cuda", bidirectional=bidirectional)
    assert err < 1e-4


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("mixer", sorted(MIXER_CONF))
def test_graphed_decoder_step_cuda(mixer, amp):
    """benchmarks/cuda_graph_step.py: samba_asr's decoding step captured as a CUDA graph and
    replayed equals the eager step over several steps, with the beam's rows changing (one graph
    per row count), in fp32 and under bf16 autocast."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from cuda_graph_step import GraphedStep

    torch.manual_seed(0)
    dec = tiny_decoder("samba_asr", mixer, device="cuda", dtype=torch.float32)
    eager = dec.step
    graphed = GraphedStep(dec)
    memory = torch.randn(1, 30, dec.embed.embedding_dim, device="cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp)
    with torch.no_grad(), ctx:
        recurrent, _ = dec.start_state(memory, torch.tensor([30], device="cuda"))
        state_e = state_g = recurrent
        for rows in (1, 4, 4, 4, 2):
            tokens = torch.randint(0, dec.output_layer.out_features, (rows,), device="cuda")
            state_e = tuple(tuple(t[:1].expand(rows, *t.shape[1:]).contiguous() for t in s)
                            for s in state_e)
            state_g = tuple(tuple(t[:1].expand(rows, *t.shape[1:]).contiguous() for t in s)
                            for s in state_g)
            out_e, state_e = eager(tokens, state_e, None)
            out_g, state_g = graphed(tokens, state_g, None)
            assert ((out_g.float() - out_e.float()).abs().max()
                    <= 1e-3 * out_e.float().abs().max())
    assert sorted(graphed.graphs) and all(max(c[1:]) <= 1e-3 for c in graphed.checks)
    assert len(graphed.graphs) == 3  # 1, 4 and 2 rows
