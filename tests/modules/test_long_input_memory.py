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
    decoding (final state).  A naive scan would hold all of them; the blocked scan (Mamba) keeps
    one state per chunk of ~sqrt(T/2) frames, the chunked SSD (Mamba2) one per 64 frames."""
    from espnet_mamba.modules.factory import build_mixer

    frames, d, d_state = 4096, 32, 64
    m = build_mixer(d, mixer, bidirectional=False, backend="torch", d_state=d_state,
                    **MIXER_CONF[mixer]).eval()
    x = torch.randn(1, frames, d)
    with torch.no_grad(), _LargestTensor() as largest:
        m(x, lengths=torch.tensor([frames]), return_final_state=True)
    all_states = frames * m.d_inner * d_state
    assert largest.numel * 8 < all_states, (largest.numel, all_states)
