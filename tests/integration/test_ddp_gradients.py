"""Distributed data-parallel training of the plugin's models, on the CPU (ddp_check's part B).

tools/gpu/ddp_check.py's gradient-equality check with 2 processes and the gloo backend: each
model (ASRTask.build_model, tiny, dropout 0) wrapped as ESPnet's trainer wraps it
(DistributedDataParallel, find_unused_parameters=False), each rank fed ESPnet's shard of one
global batch and its loss treated as trainer.py does in distributed mode; the all-reduced
gradients must equal a single-process step on the whole batch (rel. 1e-4 per parameter), every
parameter must get a gradient on every rank, the ranks must agree, and a second DDP iteration must
run (DDP raises there when a parameter was unused).  Shards: 8 -> 4 + 4 and 7 -> 4 + 3 (ESPnet
weights each rank's mean loss by its batch size, so unequal shards are exact too).
On 2 GPUs with nccl: `python tools/gpu/ddp_check.py OUT`.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "gpu"))
from ddp_check import grad_check  # noqa: E402

MODELS = ["samba_asr", "speech_mamba", "samba_asr_mamba2"]
RTOL = 1e-4


@pytest.fixture(scope="module")
def results():
    # one spawn of 2 processes for all models and both shardings (ESPnet's import dominates)
    return grad_check(MODELS, size="tiny", device_kind="cpu", world_size=2,
                      splits={"equal": 8, "unequal": 7}, rtol=RTOL)


@pytest.mark.parametrize("split", ["equal", "unequal"])
@pytest.mark.parametrize("model", MODELS)
def test_ddp_gradients_equal_single_process(results, model, split):
    r = results[f"{model}/{split}"]
    assert "error" not in r, r["error"]
    assert r["shards"] == ([4, 4] if split == "equal" else [4, 3])
    assert r["params_without_grad"] == [] and r["params_without_grad_all_ranks"] == 0
    assert r["ref_params_without_grad"] == []
    assert r["second_iteration_ok"]
    assert r["max_diff_between_ranks"] == 0.0
    assert r["loss_ddp_reported"] == pytest.approx(r["loss_single"], rel=1e-5)
    assert r["max_rel_diff_per_param"] <= RTOL, (r["worst_param"], r["max_rel_diff_per_param"])
    assert r["global_rel_diff"] <= RTOL
    assert r["ok"]
