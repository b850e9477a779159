"""The fp16 autocast policy (modules/precision.py): under fp16 autocast everything after a
mixer's input projection runs in fp32 (a selective scan's output can leave fp16's range while
every input is small), the merged bidirectional layer too; bf16, fp32 and models cast to fp16
are left alone."""

import pytest
import torch

from model_checks import MIXER_CONF


@pytest.mark.parametrize("mixer", sorted(MIXER_CONF))
@pytest.mark.parametrize("decode_step", [False, True])
def test_fp16_autocast_runs_the_recurrence_in_fp32(mixer, decode_step, monkeypatch):
    """Under fp16 autocast a mixer's output can leave fp16's range from small inputs (samba_asr's
    speech summary did on the H200: inf at step ~49 of fp16 training).  Everything after in_proj
    runs in fp32 then (modules/precision.py): the scan (or decoding step) gets fp32 inputs, an
    output far beyond 65504 is finite and equals the fp32 result up to in_proj's fp16 rounding;
    with the policy switched off the scan gets fp16 inputs and the output is inf."""
    from espnet_mamba.modules import mamba as mamba_mod, mamba2 as mamba2_mod, precision
    from espnet_mamba.modules.factory import build_mixer

    seen = []  # dtype of the first tensor argument of every scan / state step
    for mod, names in ((mamba_mod, ("selective_scan", "selective_state_step")),
                       (mamba2_mod, ("ssd_scan", "ssd_step"))):
        for name in names:
            def spy(*a, _f=getattr(mod, name), **k):  # (u, dt) or (state, x): their dtypes
                seen.append([t.dtype for t in a[:2]])
                return _f(*a, **k)
            monkeypatch.setattr(mod, name, spy)

    torch.manual_seed(0)
    mix = build_mixer(32, mixer, False, None, d_state=16, d_conv=4, expand=2,
                      **MIXER_CONF[mixer]).eval()
    with torch.no_grad():
        mix.out_proj.weight.mul_(3e6)  # outputs of order 1e5..1e6: beyond fp16 (65504)
    x = torch.randn(2, 40, 32)
    lengths = torch.tensor([40, 31])

    def steps():  # the recurrence carried over 6 decoding steps
        state, ys = mix.init_state(2), []
        for t in range(6):
            y, state = mix.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, 1)

    def run(autocast=True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            return steps() if decode_step else mix(x, lengths)

    ref = run(autocast=False)
    assert ref.abs().max() > 1e5
    seen.clear()
    y = run()
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 2e-2
    assert seen and all(d == torch.float32 for ds in seen for d in ds), seen
    monkeypatch.setattr(precision, "fp16_autocast", lambda t: False)
    seen.clear()
    assert not torch.isfinite(run()).all()
    assert any(d == torch.float16 for ds in seen for d in ds), seen


def test_fp16_autocast_merged_bidirectional_runs_in_fp32():
    """The merged bidirectional v1 layer (one grouped scan, modules/bidirectional.py) follows
    the same policy: both directions' projections are cast, the output is fp32 and finite."""
    from espnet_mamba.modules.factory import build_mixer

    torch.manual_seed(0)
    mix = build_mixer(32, "mamba", True, None, d_state=16).eval()
    assert mix._merge(torch.zeros(1, 2, 32))
    with torch.no_grad():
        for m in (mix.forward_mixer, mix.backward_mixer):
            m.out_proj.weight.mul_(3e6)
        x, lengths = torch.randn(2, 40, 32), torch.tensor([40, 31])
        ref = mix(x, lengths)
        with torch.autocast("cpu", dtype=torch.float16):
            y = mix(x, lengths)
    assert ref.abs().max() > 1e5 and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert ((y - ref).abs().max() / ref.abs().max()).item() < 2e-2


def test_fp16_policy_skips_models_cast_to_half():
    """A model cast to fp16 (no fp32 weights) under fp16 autocast runs as before, in fp16."""
    from espnet_mamba.modules.factory import build_mixer

    mix = build_mixer(32, "mamba", False, None, d_state=16, d_conv=4, expand=2).half()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        y = mix(torch.randn(2, 10, 32).half(), torch.tensor([10, 7]))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_fp16_policy_leaves_bf16_and_fp32_alone():
    from espnet_mamba.modules.precision import fp16_autocast

    t = torch.zeros(1)
    assert not fp16_autocast(t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fp16_autocast(t)
    with torch.autocast("cpu", dtype=torch.float16):
        assert fp16_autocast(t)
