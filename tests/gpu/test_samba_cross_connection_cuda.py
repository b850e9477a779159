"""samba_asr's readings of the cross-connection other than its default (attention, checked with
the other decoders in test_models_cuda.py): ``prefix`` and ``prefix_attention`` on the CUDA
kernels: teacher forcing vs beam-search steps, the two ESPnet searches, and the decoding step
replayed from CUDA graphs == the eager step (with attention the graphs read the utterance's
speech memory in place, so they are captured again for the next utterance).  The same checks
as tests/gpu/test_models_cuda.py, fp32 tolerances."""

import pytest
import torch
from model_checks import (
    MIXER_CONF,
    graphed_vs_eager_steps,
    run_beam_searches,
    teacher_forcing_vs_steps,
    tiny_decoder,
)

pytestmark = pytest.mark.gpu
CASES = [(how, mixer) for how in ("prefix", "prefix_attention") for mixer in MIXER_CONF]


def _decoder(how, mixer):
    return tiny_decoder("samba_asr", mixer, device="cuda", dtype=torch.float32, backend="cuda",
                        cross_connection=how)


@pytest.mark.parametrize("how,mixer", CASES)
def test_teacher_forcing_equals_batch_score_cuda(how, mixer):
    assert teacher_forcing_vs_steps(_decoder(how, mixer), device="cuda",
                                    dtype=torch.float32) < 1e-4


@pytest.mark.parametrize("how,mixer", CASES)
def test_beam_searches_agree_cuda(how, mixer):
    _, (single, batched) = run_beam_searches(_decoder(how, mixer), 0.0, device="cuda",
                                             dtype=torch.float32)
    assert [h.yseq.tolist() for h in single] == [h.yseq.tolist() for h in batched]


@pytest.mark.parametrize("how,mixer", CASES)
def test_cuda_graph_batch_score_equals_eager_cuda(how, mixer):
    torch.manual_seed(0)
    dec = _decoder(how, mixer)
    graphs = graphed_vs_eager_steps(dec)
    assert graphs.disabled is None, graphs.disabled
    # rows 1, 4, 2; once more for the second utterance where the graphs read its speech memory
    assert len(graphs.checks) == (3 if how == "prefix" else 6)
    assert all(max(c[1:]) <= 1e-3 for c in graphs.checks)
