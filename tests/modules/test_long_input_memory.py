"""The mixers on long inputs, PyTorch path: no (batch, d_inner, frames, d_state) tensor is ever
built, the invariant behind decoding a 20-minute recording on a CPU
(benchmarks/long_recording_cpu.py)."""

import pytest
import torch

from model_checks import MIXER_CONF


class _LargestTensor:
    """Records the largest tensor any aten op creates (a TorchDispatchMode)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_leaves(out):
                    if isinstance(t, torch.Tensor):
                        outer.numel = max(outer.numel, t.numel())
                return out

        self.numel, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


@pytest.mark.parametrize("mixer", sorted(MIXER_CONF))
def test_torch_path_never_builds_a_state_per_frame(mixer):
    """The long-recording invariant behind the benchmark: on the PyTorch path no tensor of
    (batch, d_inner, frames, d_state) elements is ever built, in training (forward) or in
    decoding (final state).  A naive scan would hold all of them; the windowed scan (Mamba) holds
    one window's states (about a million numbers), the chunked SSD (Mamba2) one per 64 frames."""
    from espnet_mamba.modules.factory import build_mixer

    frames, d, d_state = 4096, 32, 64
    m = build_mixer(d, mixer, bidirectional=False, backend="torch", d_state=d_state,
                    **MIXER_CONF[mixer]).eval()
    x = torch.randn(1, frames, d)
    with torch.no_grad(), _LargestTensor() as largest:
        m(x, lengths=torch.tensor([frames]), return_final_state=True)
    all_states = frames * m.d_inner * d_state
    assert largest.numel * 8 < all_states, (largest.numel, all_states)


def _saved_for_backward(fn):
    """Elements of the distinct storages that autograd keeps for backward while ``fn`` runs
    (views of one storage count once; parameters, which exist anyway, are left out)."""
    storages = {}

    def pack(t):
        if not isinstance(t, torch.nn.Parameter):
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mixer", sorted(MIXER_CONF))
def test_training_keeps_no_state_per_frame_for_backward(mixer, bidirectional):
    """Training memory on the PyTorch path is O(batch x frames x d_inner), not
    O(batch x frames x d_inner x d_state): what autograd keeps for backward grows with d_state
    only by B and C (d_state numbers per frame, not per channel) and by the states at window
    boundaries (at most one (batch, frames, d_inner) tensor), never by a state per frame and
    channel.  Gradients against the recurrence: tests/ops/test_scans_match_recurrence.py."""
    from espnet_mamba.modules.factory import build_mixer

    batch, frames, d = 2, 512, 64

    def saved(d_state):
        torch.manual_seed(0)
        m = build_mixer(d, mixer, bidirectional=bidirectional, backend="torch",
                        d_state=d_state, **MIXER_CONF[mixer]).train()
        x = torch.randn(batch, frames, d, requires_grad=True)
        n, y = _saved_for_backward(lambda: m(x, lengths=torch.tensor([frames, frames - 100])))
        y.square().mean().backward()  # what was kept is enough for backward
        assert x.grad is not None and torch.isfinite(x.grad).all()
        inner = m.forward_mixer if bidirectional else m
        return n, batch * frames * inner.d_inner * (2 if bidirectional else 1)

    small, per_frame = saved(16)  # per_frame: one (batch, frames, d_inner) tensor, all directions
    large, _ = saved(64)
    # A state per frame and channel would add 48 such tensors, and be 64 of them at d_state 64
    assert large - small < 4 * per_frame, (small, large, per_frame)
    assert large < 32 * per_frame, (large, per_frame)
