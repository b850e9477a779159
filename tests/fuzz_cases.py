"""What the encoder and decoder fuzz tests share (hypothesis: not needed on the GPU machine)."""

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = st.sampled_from([torch.float32, torch.float64])


def fuzz_mixer_conf(draw, mixer):
    return {"headdim": draw(st.sampled_from([4, 8, 12, 16]))} if mixer == "mamba2" else {}
