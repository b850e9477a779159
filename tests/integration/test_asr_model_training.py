"""Training steps of a whole ESPnetASRModel built by ESPnet's ASRTask with the plugin's encoder
and decoder, in process: bf16 autocast (ESPnet's use_amp) keeps the SSM parameters fp32 through
an optimiser step; two seeded trainings give bit-identical losses and parameters, another seed
differs (docs/reliability.md, "Mixed precision", "Determinism")."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model_checks import check_fp32_ssm, ssm_parameters

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import long_recording_cpu as bench  # noqa: E402


def _build_asr_model(*cli):
    from espnet2.tasks.asr import ASRTask

    token_list = Path(tempfile.gettempdir()) / f"espnet_mamba_tokens_{os.getpid()}.txt"
    token_list.write_text("".join(t + "\n" for t in bench.TOKENS))
    args = ASRTask.get_parser().parse_args(["--token_list", str(token_list), *cli])
    return ASRTask.build_model(args)


def _conf_args(part, conf):
    return [a for k, v in conf.items() for a in (f"--{part}_conf", f"{k}={v}")]


def _batch(seed, n=2):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([16000, 11000][:n])
    speech = torch.randn(n, int(lengths.max()), generator=gen) * 0.1
    text_lengths = torch.tensor([7, 4][:n])
    text = torch.randint(2, len(bench.TOKENS) - 1, (n, int(text_lengths.max())), generator=gen)
    text[1:, 4:] = -1  # ESPnet's padding id
    return {"speech": speech, "speech_lengths": lengths, "text": text,
            "text_lengths": text_lengths}


def test_asr_model_autocast_bf16_training_step():
    """The whole ESPnetASRModel (ESPnet's use_amp is this autocast): finite loss and grads,
    SSM parameters fp32 before and after an optimiser step."""
    model = _build_asr_model("--encoder", "samba_asr", "--decoder", "samba_asr",
                             *_conf_args("encoder", bench.TINY_CONF),
                             *_conf_args("decoder", bench.TINY_DECODER_CONF))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = _batch(seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch)[0]
    assert torch.isfinite(loss)
    loss.backward()
    check_fp32_ssm(model, 3)
    opt.step()
    assert all(p.dtype == torch.float32 for p in ssm_parameters(model).values())


def _train(encoder, decoder, mixer, steps=3, seed=0):
    torch.manual_seed(seed)
    extra = {"mixer": mixer, "mixer_conf": "{headdim: 8}"} if mixer == "mamba2" else {}
    enc = dict(bench.TINY_CONF, dropout_rate=0.1, **extra)
    dec = dict(bench.TINY_DECODER_CONF, dropout_rate=0.1, **extra)
    if encoder == "speech_mamba":
        enc["attention_heads"] = 2
    if decoder == "speech_mamba":
        dec["attention_heads"] = 2
    model = _build_asr_model("--encoder", encoder, "--decoder", decoder,
                             *_conf_args("encoder", enc), *_conf_args("decoder", dec),
                             "--model_conf", "ctc_weight=0.3").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        loss = model(**_batch(seed=100 + step))[0]  # dropout draws from torch's seeded RNG
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("encoder,decoder,mixer", [("samba_asr", "samba_asr", "mamba"),
                                                   ("speech_mamba", "speech_mamba", "mamba2")])
def test_seeded_training_is_deterministic(encoder, decoder, mixer):
    losses1, state1 = _train(encoder, decoder, mixer)
    losses2, state2 = _train(encoder, decoder, mixer)
    assert all(np.isfinite(losses1)) and len(set(losses1)) > 1  # it trained
    assert losses1 == losses2  # exact equality
    assert state1.keys() == state2.keys()
    assert all(torch.equal(state1[k], state2[k]) for k in state1)
    losses3, _ = _train(encoder, decoder, mixer, seed=1)
    assert losses3 != losses1  # the seed matters (the test would catch a constant)
