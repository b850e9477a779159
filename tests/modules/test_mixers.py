"""Mamba / Mamba2 mixers: padding, left padding, step vs forward, mamba-ssm parameter layout,
the merged bidirectional scan, unknown mixers and mixer options (modules/factory.py)."""

import json
from pathlib import Path

import pytest
import torch

from espnet_mamba.modules.factory import build_mixer
from espnet_mamba.modules.mamba import Mamba
from espnet_mamba.modules.mamba2 import Mamba2
from espnet_mamba.modules.padding import reverse_padded
from tensor_checks import rel_err
from model_checks import ENCODERS

F64 = torch.float64
MIXERS = [("mamba", {}), ("mamba2", {"headdim": 8, "d_state": 16})]
RECORDED = Path(__file__).resolve().parents[1] / "data" / "mamba_ssm_params.json"


@pytest.mark.parametrize("mixer,kw", MIXERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_alone_equals_padded_batch(mixer, kw, bidirectional):
    m = build_mixer(32, mixer, bidirectional, **kw).double()
    x = torch.randn(4, 41, 32, dtype=F64)
    lengths = torch.tensor([41, 40, 13, 1])
    y = m(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert rel_err(y[i, :n], m(x[i:i + 1, :n], lengths[i:i + 1])[0]) < 1e-5


@pytest.mark.parametrize("mixer,kw", MIXERS)
def test_final_state_and_left_padding(mixer, kw):
    m = build_mixer(32, mixer, **kw).double()
    x = torch.randn(3, 20, 32, dtype=F64)
    lengths = torch.tensor([20, 9, 2])
    _, states = m(x, lengths=lengths, return_final_state=True)
    for i, n in enumerate(lengths.tolist()):
        _, alone = m(x[i:i + 1, :n], return_final_state=True)
        # the same utterance left-padded (valid frames at the end) gives the same state
        left = torch.zeros(1, 20, 32, dtype=F64)
        left[:, 20 - n:] = x[i:i + 1, :n]
        mask = torch.arange(20)[None] >= 20 - n
        y_left, left_states = m(left, mask=mask, return_final_state=True)
        assert rel_err(y_left[0, 20 - n:], m(x[i:i + 1, :n])[0]) < 1e-10
        for s, a, lft in zip(states, alone, left_states):
            assert rel_err(s[i], a[0]) < 1e-10 and rel_err(lft[0], a[0]) < 1e-10


@pytest.mark.parametrize("mixer,kw", MIXERS)
def test_step_equals_forward(mixer, kw):
    m = build_mixer(32, mixer, **kw).double()
    x = torch.randn(2, 25, 32, dtype=F64)
    y, final = m(x, return_final_state=True)
    state = m.init_state(2, dtype=F64)
    shapes = [s.shape for s in state]
    for t in range(25):
        yt, new = m.step(x[:, t], state)
        assert [s.shape for s in new] == shapes  # fixed-size state
        assert rel_err(yt, y[:, t]) < 1e-10
        state = new
    for s, f in zip(state, final):
        assert rel_err(s, f) < 1e-10


def test_step_leaves_input_state_untouched():
    m = Mamba(16).double()
    state = tuple(torch.randn_like(s) for s in m.init_state(2, dtype=F64))
    before = [s.clone() for s in state]
    m.step(torch.randn(2, 16, dtype=F64), state)
    assert all(torch.equal(a, b) for a, b in zip(state, before))


def test_reverse_padded():
    x = torch.arange(10.0).view(2, 5, 1)
    r = reverse_padded(x, torch.tensor([5, 3]))
    assert r[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


def test_parameters_match_recorded_mamba_ssm():
    """Names and shapes equal mamba-ssm's modules (recorded on the GPU machine, where
    mamba-ssm imports, by tools/record_mamba_ssm_params.py)."""
    record = json.loads(RECORDED.read_text())
    classes = {"Mamba": Mamba, "Mamba2": Mamba2}
    assert len(record["configs"]) >= 6
    for entry in record["configs"]:
        ours = classes[entry["module"]](**entry["kwargs"])
        got = {k: list(v.shape) for k, v in ours.state_dict().items()}
        assert got == entry["params"], (entry["module"], entry["kwargs"])


def test_ssm_parameters_are_fp32_and_no_weight_decay():
    for m in (Mamba(16), Mamba2(16, headdim=8, d_state=8)):
        for name in ("A_log", "D"):
            p = getattr(m, name)
            assert p.dtype == torch.float32 and p._no_weight_decay


@pytest.mark.parametrize("lengths", [None, [23, 11, 1]])
def test_bidirectional_merged_scan_equals_two_scans(lengths):
    """Two Mamba v1 directions through one grouped scan (modules/bidirectional.py, the default on
    the PyTorch path) == the two mixers run separately: outputs and every gradient."""
    from espnet_mamba.modules.execution import set_execution
    from espnet_mamba.modules.factory import build_mixer

    torch.manual_seed(0)
    mix = build_mixer(16, "mamba", True, None, d_state=4, d_conv=4, expand=2).double()
    x = torch.randn(3, 23, 16, dtype=torch.float64)
    lengths = None if lengths is None else torch.tensor(lengths)
    results = []
    for merge in ("never", "always"):
        set_execution(mix, merge_directions=merge)
        assert mix._merge(x) == (merge == "always")
        xi = x.clone().requires_grad_()
        y = mix(xi, lengths)
        results.append((y, *torch.autograd.grad(y.square().sum(), [xi, *mix.parameters()])))
    assert all(rel_err(a, b) < 1e-12 for a, b in zip(*results))


def test_bidirectional_merge_only_for_mamba_v1():
    from espnet_mamba.modules.factory import build_mixer

    x = torch.randn(1, 8, 32)
    assert build_mixer(32, "mamba", True, None, d_state=4)._merge(x)  # PyTorch path: "auto"
    assert not build_mixer(32, "mamba2", True, None, d_state=16, headdim=16)._merge(x)


def test_unknown_mixer_option_is_named():
    with pytest.raises(ValueError, match="headdimm.*valid: .*headdim"):
        ENCODERS["samba_asr"](20, mixer="mamba2", mixer_conf={"headdimm": 16})
    with pytest.raises(ValueError,
                       match=r"encoder_conf.mixer = 'mamba3': must be one of 'mamba', 'mamba2'"):
        ENCODERS["samba_asr"](20, mixer="mamba3")
