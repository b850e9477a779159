"""Decoders on the CUDA kernels: teacher forcing vs beam-search steps, and the two ESPnet
searches, with the same checks as the CPU tests (fp32 tolerances)."""

import pytest
import torch
from model_checks import (
    ENCODERS,
    MIXER_CONF,
    encoder_padding_error,
    graphed_vs_eager_steps,
    packed_vs_padded_error,
    run_beam_searches,
    teacher_forcing_vs_steps,
    tiny_decoder,
)

from espnet_mamba.modules.execution import set_execution

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


@pytest.mark.parametrize("path", ["padded", "fused", "unfused"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_packed_encoder_cuda(name, bidirectional, path):
    """Packed (pack_sequences) == the padded batch on CUDA, for each way the Mamba2 mixers can
    run a packed row (the execution option packed_mixer)."""
    err = packed_vs_padded_error(name, "mamba2", device="cuda", dtype=torch.float32,
                                 backend="cuda", bidirectional=bidirectional,
                                 packed_mixer=path)
    assert err < 1e-4


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("name,mixer", PAIRS)
def test_cuda_graph_batch_score_equals_eager_cuda(name, mixer, amp):
    """espnet_mamba/graphs/decoding.py: batch_score with the step replayed from CUDA graphs
    == the eager step, over steps whose row count changes (a count is captured when seen the
    second time: one graph per count, 1, 4, 2), in fp32 and under bf16 autocast, and for two
    utterances in turn (speech_mamba's graphs read the utterance's memory: they are dropped and
    captured again for the next one)."""
    torch.manual_seed(0)
    dec = tiny_decoder(name, mixer, device="cuda", dtype=torch.float32, backend="cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp)
    graphs = graphed_vs_eager_steps(dec, ctx)
    assert graphs.disabled is None, graphs.disabled
    # rows 1, 4, 2; once more for the second utterance where the graphs read its speech memory
    # (speech_mamba, samba_asr's default attention reading)
    reads_memory = name == "speech_mamba" or dec.cross_attention is not None
    assert len(graphs.checks) == (6 if reads_memory else 3)
    assert all(max(c[1:]) <= 1e-3 for c in graphs.checks)
    assert len(graphs.graphs) == 3


def test_cuda_graph_follows_dtype_change_cuda():
    """Casting the decoder after graphs were captured drops them (they read the old weights)."""
    dec = tiny_decoder("samba_asr", "mamba", device="cuda", dtype=torch.float32, backend="cuda")
    x = torch.randn(20, dec.output_layer.in_features, device="cuda")
    ys = torch.ones(1, 1, dtype=torch.long, device="cuda")
    with torch.no_grad():
        for _ in range(2):  # captured at the second sighting
            dec.batch_score(ys, [dec.batch_init_state(x)], x)
        assert len(dec.step_graphs.graphs) == 1
        dec.to(torch.bfloat16)
        assert not dec.step_graphs.graphs
        x = x.bfloat16()
        for _ in range(2):
            logp, _ = dec.batch_score(ys, [dec.batch_init_state(x)], x)
        set_execution(dec, cuda_graphs=False)
        ref, _ = dec.batch_score(ys, [dec.batch_init_state(x)], x)
    assert (logp - ref).abs().max() <= 1e-3 * ref.abs().max()
    assert dec.step_graphs.disabled is None and len(dec.step_graphs.graphs) == 1


@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_nonfinite_rows_on_cuda(name):
    """A NaN row in a CUDA batch (encoders/input_layer.py check_input: found in the lengths'
    one copy to the host): training passes it on, the row is reported and the other rows'
    outputs are finite; decoding raises ESPnet's TooShortUttError naming the row."""
    from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import (
        TooShortUttError,
    )

    enc = ENCODERS[name](20, output_size=64, num_blocks=2, d_state=16, backend="cuda").cuda()
    x = torch.randn(3, 80, 20, device="cuda")
    x[1, 7, 3] = float("nan")
    ilens = torch.tensor([80, 70, 50], device="cuda")
    y, olens, _ = enc.train()(x, ilens)
    assert enc.nonfinite_rows == [1]
    assert y[0, :olens[0]].isfinite().all() and y[2, :olens[2]].isfinite().all()
    with torch.no_grad(), pytest.raises(TooShortUttError, match=r"batch row\(s\) \[1\] of 3"):
        enc.eval()(x, ilens)


@pytest.mark.parametrize("name,kw", [("speech_mamba", {}),
                                     ("samba_asr", {"cross_connection": "attention"})])
def test_several_utterances_replay_with_their_kept_memory_cuda(name, kw):
    """BatchBeamSearch's layout of two utterances (runs of their beams) on CUDA: the stacked
    speech memory is kept for those runs, so the steps after the first sighting replay one
    real CUDA graph that reads it, and give the eager step's log-probs (1e-3 relative)."""
    torch.manual_seed(0)
    dec = tiny_decoder(name, "mamba", device="cuda", dtype=torch.float32, backend="cuda", **kw)
    xs = [torch.randn(12 + 5 * i, 32, device="cuda") for i in range(2)]
    ys = torch.ones(4, 1, dtype=torch.long, device="cuda")

    def steps(graphs):
        set_execution(dec, cuda_graphs=graphs)
        starts = [dec.batch_init_state(x) for x in xs]
        states, out = [starts[0], starts[0], starts[1], starts[1]], []
        with torch.no_grad():
            for _ in range(4):
                logp, rows = dec.batch_score(ys, states, None)
                states = [dec.select_state(rows, i) for i in range(len(states))]
                out.append(logp)
        return out

    eager = steps(False)
    graphed = steps(True)
    assert dec.step_graphs.disabled is None, dec.step_graphs.disabled
    assert len(dec.step_graphs.graphs) == 1
    for e, g in zip(eager, graphed):
        assert (g - e).abs().max() <= 1e-3 * e.abs().max()
