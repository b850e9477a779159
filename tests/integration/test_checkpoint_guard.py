"""The whole-model checkpoint key guard (integration/checkpoint_guard.py around ESPnet's
``build_model_from_file``, with modules/strict_load.py): a model that contains the plugin's
classes refuses a checkpoint with a missing or an unexpected key anywhere, naming the keys
(ESPnet loads with ``strict=False``); a stock model loads as in stock ESPnet.  Through
Speech2Text and a packed zip: tests/integration/test_model_zoo_packing.py."""

import pytest

from espnet_mamba.integration import checkpoint_guard, registration

TOKENS = ["<blank>", "<unk>", "a", "b", "c", "<space>", "<sos/eos>"]


def _model_files(tmp_path, encoder, decoder, encoder_conf, decoder_conf):
    """config.yaml + model.pth of an untrained ASR model built by ESPnet's ASRTask."""
    import torch
    import yaml
    from espnet2.tasks.asr import ASRTask

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "tokens.txt").write_text("".join(t + "\n" for t in TOKENS))
    cli = ["--token_list", str(tmp_path / "tokens.txt"), "--token_type", "char",
           "--encoder", encoder, "--decoder", decoder, "--frontend_conf", "n_mels=20"]
    for part, conf in (("encoder", encoder_conf), ("decoder", decoder_conf)):
        cli += [x for k, v in conf.items() for x in (f"--{part}_conf", f"{k}={v}")]
    args = ASRTask.get_parser().parse_args(cli)
    model = ASRTask.build_model(args)
    assert not model._load_state_dict_post_hooks  # build_model outside loading: no hooks
    config, weights = tmp_path / "config.yaml", tmp_path / "model.pth"
    config.write_text(yaml.safe_dump(dict(vars(args), token_list=TOKENS), sort_keys=False))
    torch.save(model.state_dict(), weights)
    return config, weights


PLUGIN_MODEL = ("samba_asr", "samba_asr", {"output_size": 16, "num_blocks": 1, "d_state": 4},
                {"num_blocks": 1, "d_state": 4})
STOCK_MODEL = ("transformer", "transformer",
               {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 1},
               {"attention_heads": 2, "linear_units": 32, "num_blocks": 1})


def _edited(weights, tmp_path, drop=(), add=()):
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    for k in drop:
        del state[k]
    for k in add:
        state[k] = torch.zeros(2)
    out = tmp_path / f"edited_{len(list(tmp_path.iterdir()))}.pth"
    torch.save(state, out)
    return out


def test_checkpoint_guard_wraps_each_task_class_once():
    import espnet2.tasks.asr as asr
    import espnet2.tasks.slu as slu

    for cls in (asr.ASRTask, slu.SLUTask):
        for name in ("build_model_from_file", "build_model"):
            assert getattr(getattr(cls, name).__func__, checkpoint_guard._GUARD_MARK, False), (cls, name)
    # SLUTask inherits ASRTask's build_model_from_file wrapper: not wrapped a second time
    assert slu.SLUTask.build_model_from_file.__func__ is asr.ASRTask.build_model_from_file.__func__
    assert checkpoint_guard.guard_checkpoint_loading(asr) == []
    assert checkpoint_guard.guard_checkpoint_loading(slu) == []
    registration.register_into(asr)
    assert not getattr(asr.ASRTask.build_model_from_file.__func__.__wrapped__,
                       checkpoint_guard._GUARD_MARK, False)  # one layer of wrapping only


def test_plugin_model_refuses_a_mismatch_anywhere(tmp_path):
    from espnet2.tasks.asr import ASRTask

    from espnet_mamba.modules.strict_load import CheckpointMismatchError

    config, weights = _model_files(tmp_path / "m", *PLUGIN_MODEL)
    model, _ = ASRTask.build_model_from_file(config, weights)  # a matching checkpoint loads
    assert not model._load_state_dict_pre_hooks and not model._load_state_dict_post_hooks
    for drop, add, named in ((["ctc.ctc_lo.weight"], [], "missing keys ['ctc.ctc_lo.weight']"),
                             ([], ["ctc.extra"], "unexpected keys ['ctc.extra']"),
                             ([], ["encoder.extra"], "unexpected keys ['encoder.extra']")):
        bad = _edited(weights, tmp_path, drop, add)
        with pytest.raises(CheckpointMismatchError) as err:
            ASRTask.build_model_from_file(config, bad)
        assert named in str(err.value) and str(bad) in str(err.value), str(err.value)


def test_long_key_lists_are_shortened(tmp_path):
    from espnet2.tasks.asr import ASRTask

    from espnet_mamba.modules.strict_load import MAX_LISTED, CheckpointMismatchError

    config, weights = _model_files(tmp_path / "m", *PLUGIN_MODEL)
    import torch
    n = len(torch.load(weights, weights_only=True))
    with pytest.raises(CheckpointMismatchError, match=rf"\.\.\.\] \({n} in all\)") as err:
        ASRTask.build_model_from_file(config, _edited(weights, tmp_path, add=[
            f"x{i}" for i in range(3)], drop=list(torch.load(weights, weights_only=True))))
    assert str(err.value).count("'") <= 2 * (MAX_LISTED + 3), str(err.value)


def test_stock_model_loads_as_in_stock_espnet(tmp_path):
    """No plugin class in the model: ESPnet's strict=False semantics, untouched."""
    from espnet2.tasks.asr import ASRTask

    config, weights = _model_files(tmp_path / "m", *STOCK_MODEL)
    bad = _edited(weights, tmp_path, drop=["ctc.ctc_lo.weight"], add=["ctc.extra"])
    model, _ = ASRTask.build_model_from_file(config, bad)  # silently, as ESPnet does
    assert not model._load_state_dict_pre_hooks and not model._load_state_dict_post_hooks
