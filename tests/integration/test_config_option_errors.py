"""Errors for options the plugin's encoders and decoders do not take, as users of asr_train meet
them.  Swapping one line of an ESPnet config: ``encoder: conformer`` -> ``encoder: samba_asr`` in
ESPnet's own librispeech_100 configs (their real text, from ESPnet's source distribution:
tools/fetch_espnet_recipes.sh).

* the error names the conf and the class, lists exactly the lines to delete (options of ESPnet's
  encoder/decoder that ours do not have, each printed as it reads in the config) and the lines
  to keep; a misspelt key gets the closest valid option (modules/factory.py);
* deleting what it says builds the model (ASRTask.build_model, 5,000 tokens), with the decoder
  line kept (transformer) or swapped too;
* through ``asr_train`` the error comes at model build, before any data is read, and
  ``--print_config`` passes;
* a misspelt key in ``--encoder_conf`` / ``--decoder_conf`` on the command line gets the same
  message, with the list of every valid option.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPE = "egs2/librispeech_100/asr1/conf"
CONFORMER = f"{RECIPE}/tuning/train_asr_conformer_lr2e-3_warmup15k_amp_nondeterministic.yaml"
E_BRANCHFORMER = f"{RECIPE}/train_asr.yaml"  # the recipe's default
VOCAB = 5000  # librispeech_100's nbpe

# What each swap must say, written out here (not derived like the code does) so that the test
# pins the advice a user gets for these configs.
KEEP = ["output_size", "num_blocks", "dropout_rate", "input_layer"]
CONFORMER_ONLY = ["attention_heads", "linear_units", "positional_dropout_rate",
                  "attention_dropout_rate", "normalize_before", "macaron_style", "rel_pos_type",
                  "pos_enc_layer_type", "selfattention_layer_type", "activation_type",
                  "use_cnn_module", "cnn_module_kernel"]
E_BRANCHFORMER_ONLY = ["attention_heads", "attention_layer_type", "pos_enc_layer_type",
                       "rel_pos_type", "cgmlp_linear_units", "cgmlp_conv_kernel",
                       "use_linear_after_conv", "gate_activation", "positional_dropout_rate",
                       "attention_dropout_rate", "layer_drop_rate", "linear_units",
                       "positionwise_layer_type", "use_ffn", "macaron_ffn", "merge_conv_kernel"]
TRANSFORMER_DECODER_ONLY = ["attention_heads", "linear_units", "positional_dropout_rate",
                            "self_attention_dropout_rate", "src_attention_dropout_rate",
                            "layer_drop_rate"]  # the last in the E-Branchformer config only
CLASSES = {("encoder", "samba_asr"): "SambaASREncoder",
           ("encoder", "speech_mamba"): "SpeechMambaEncoder",
           ("decoder", "samba_asr"): "SambaASRDecoder",
           ("decoder", "speech_mamba"): "SpeechMambaDecoder"}


@pytest.fixture(scope="module")
def espnet_root() -> Path:
    run = subprocess.run(["bash", str(REPO / "tools" / "fetch_espnet_recipes.sh")],
                         capture_output=True, text=True)
    root = Path(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else None
    if run.returncode != 0 or root is None or not (root / CONFORMER).is_file():
        pytest.fail("these tests read ESPnet's own librispeech_100 configs from its source "
                    f"distribution, and tools/fetch_espnet_recipes.sh did not provide {CONFORMER}"
                    f" (exit status {run.returncode}): {run.stderr.strip()[-2000:]}")
    return root


@pytest.fixture(scope="module")
def asr_task():
    from espnet2.tasks.asr import ASRTask

    return ASRTask


@pytest.fixture(scope="module")
def token_list(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens = ["<blank>", "<unk>", *(f"tok{i}" for i in range(VOCAB - 3)), "<sos/eos>"]
    path.write_text("\n".join(tokens) + "\n")
    return path


# --------------------------------------------------------------------------------- shared code

def swap(text: str, part: str, name: str) -> str:
    """The one-line edit: ``<part>: <ESPnet's class>`` -> ``<part>: <name>``."""
    new, n = re.subn(rf"^{part}: \S+$", f"{part}: {name}", text, flags=re.M)
    assert n == 1, f"no single '{part}:' line"
    return new


def delete_lines(text: str, part: str, keys) -> str:
    """Delete ``    <key>: ...`` lines of the ``<part>_conf:`` block, as a user would."""
    out, inside, deleted = [], False, []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            inside = line.rstrip() == f"{part}_conf:"
        key = line.strip().split(":")[0]
        if inside and line.startswith("    ") and key in keys:
            deleted.append(key)
            continue
        out.append(line)
    assert sorted(deleted) == sorted(keys), (deleted, keys)
    return "".join(out)


def advice(message: str) -> dict:
    """The sections of the printed message: {"delete"/"keep"/"unknown": [(key, value, note)]}."""
    sections, current = {}, None
    for line in message.splitlines()[1:]:
        if m := re.match(r"^  (?:\d+ )?(delete|keep|unknown) ", line):
            current = sections.setdefault(m.group(1), [])
        elif m := re.match(r"^    (\w+): (.*?)(?:    <- (.*))?$", line):
            current.append((m.group(1), m.group(2), m.group(3)))
        else:
            current = None
    return sections


def build(asr_task, text: str, token_list: Path, tmp_path: Path):
    """What asr_train does with --config: parse (unknown top-level keys are errors), build."""
    config = tmp_path / "config.yaml"
    config.write_text(text)
    args = asr_task.get_parser().parse_args(["--config", str(config),
                                             "--token_list", str(token_list)])
    return asr_task.build_model(args)


def refused(asr_task, text, token_list, tmp_path):
    from espnet_mamba.modules.factory import UnknownOptionsError

    with pytest.raises(UnknownOptionsError) as info:
        build(asr_task, text, token_list, tmp_path)
    return info.value


def check_message(err, text: str, part: str, name: str, espnet: str, delete, keep,
                  unknown=None):
    """The message says exactly this, every line as it reads in the config."""
    cls = CLASSES[part, name]
    message = str(err)
    first = message.splitlines()[0]
    assert first == (f"{part}_conf of {cls}: {len(delete) + len(unknown or {})} options "
                     f"that {cls} does not take"), first
    assert (f"  delete {len(delete)} lines of {part}_conf, options of {espnet} that "
            f"{cls} does not have:") in message.splitlines()
    assert f"  keep {len(keep)} lines (options of {cls} too):" in message.splitlines()
    if unknown:
        assert len(unknown) == 1  # the cases here: one misspelt key
        assert (f"  1 unknown option, of neither {cls} nor of ESPnet's {part}s; "
                "fix or delete:") in message.splitlines()
    got = advice(message)
    assert [k for k, _, _ in got["delete"]] == delete
    assert [k for k, _, _ in got.get("keep", [])] == keep
    assert {k: n for k, _, n in got.get("unknown", [])} == {
        k: f"did you mean {v!r}?" for k, v in (unknown or {}).items()}
    lines = set(text.splitlines())
    for section in got.values():  # each printed line is the config's own line
        for key, value, _ in section:
            assert f"    {key}: {value}" in lines, (key, value)
    assert message.splitlines()[-1].startswith(f"  every option of {cls} ({part}_conf): ")
    # the same, as attributes
    assert list(err.delete) == delete and err.keep == keep and err.unknown == (unknown or {})


def our_options(part: str, name: str) -> set:
    from espnet_mamba.integration import names, registration

    table = names.ENCODERS if part == "encoder" else names.DECODERS
    return set(inspect.signature(registration.load_class(table[name])).parameters)


# ------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("name, keep", [("samba_asr", KEEP),
                                        ("speech_mamba", ["output_size", "attention_heads",
                                                          "num_blocks", "dropout_rate",
                                                          "attention_dropout_rate",
                                                          "input_layer"])])
def test_conformer_swap_lists_the_lines_to_delete_and_keep(name, keep, espnet_root, asr_task,
                                                           token_list, tmp_path):
    text = swap((espnet_root / CONFORMER).read_text(), "encoder", name)
    err = refused(asr_task, text, token_list, tmp_path)
    delete = [k for k in CONFORMER_ONLY if k not in keep]
    check_message(err, text, "encoder", name, "ESPnet's conformer encoder (ConformerEncoder)",
                  delete, keep)
    # consistent with the classes themselves: ours lack exactly these, ESPnet's has them all
    from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

    conf = yaml.safe_load(text)["encoder_conf"]
    assert set(delete) == set(conf) - our_options("encoder", name)
    assert set(delete) <= set(inspect.signature(ConformerEncoder).parameters)


def test_e_branchformer_swap_lists_the_lines_to_delete_and_keep(espnet_root, asr_task,
                                                                token_list, tmp_path):
    text = swap((espnet_root / E_BRANCHFORMER).read_text(), "encoder", "samba_asr")
    err = refused(asr_task, text, token_list, tmp_path)
    check_message(err, text, "encoder", "samba_asr",
                  "ESPnet's e_branchformer encoder (EBranchformerEncoder)",
                  E_BRANCHFORMER_ONLY, KEEP)


@pytest.mark.parametrize("config, espnet, only", [
    (CONFORMER, "ESPnet's conformer encoder (ConformerEncoder)", CONFORMER_ONLY),
    (E_BRANCHFORMER, "ESPnet's e_branchformer encoder (EBranchformerEncoder)",
     E_BRANCHFORMER_ONLY)], ids=["conformer", "e_branchformer"])
def test_misspelt_key_gets_the_closest_option(config, espnet, only, espnet_root, asr_task,
                                              token_list, tmp_path):
    text = swap((espnet_root / config).read_text(), "encoder", "samba_asr")
    text, n = re.subn(r"^    num_blocks: 12$", "    num_block: 12", text, flags=re.M)
    assert n == 1
    err = refused(asr_task, text, token_list, tmp_path)
    check_message(err, text, "encoder", "samba_asr", espnet, only,
                  [k for k in KEEP if k != "num_blocks"], unknown={"num_block": "num_blocks"})


@pytest.mark.parametrize("config, decoder", [(CONFORMER, "transformer"),
                                             (CONFORMER, "samba_asr"),
                                             (CONFORMER, "speech_mamba"),
                                             (E_BRANCHFORMER, "samba_asr")],
                         ids=["conformer-transformer", "conformer-samba_asr",
                              "conformer-speech_mamba", "e_branchformer-samba_asr"])
def test_following_the_message_builds_the_model(config, decoder, espnet_root, asr_task,
                                                token_list, tmp_path):
    import torch

    original = (espnet_root / config).read_text()
    text = swap(original, "encoder", "samba_asr")
    err = refused(asr_task, text, token_list, tmp_path)
    text = delete_lines(text, "encoder", [k for k, _, _ in advice(str(err))["delete"]])
    if decoder != "transformer":  # the decoder's conf is checked once the encoder builds
        text = swap(text, "decoder", decoder)
        err = refused(asr_task, text, token_list, tmp_path)
        said = [k for k, _, _ in advice(str(err))["delete"]]
        want = [k for k in yaml.safe_load(text)["decoder_conf"]
                if k in TRANSFORMER_DECODER_ONLY and k not in our_options("decoder", decoder)]
        assert said == want
        check_message(err, text, "decoder", decoder,
                      "ESPnet's transformer decoder (TransformerDecoder)", want,
                      [k for k in yaml.safe_load(text)["decoder_conf"] if k not in want])
        text = delete_lines(text, "decoder", said)
    torch.manual_seed(0)
    model = build(asr_task, text, token_list, tmp_path)
    conf = yaml.safe_load(original)
    assert type(model.encoder).__name__ == "SambaASREncoder"
    assert model.vocab_size == VOCAB and model.decoder.output_layer.out_features == VOCAB
    assert model.encoder.output_size() == conf["encoder_conf"]["output_size"]
    assert len(model.encoder.encoders) == conf["encoder_conf"]["num_blocks"]
    assert len(model.decoder.decoders) == conf["decoder_conf"]["num_blocks"]
    if decoder == "transformer":
        assert type(model.decoder).__name__ == "TransformerDecoder"
    else:
        assert type(model.decoder).__name__ == CLASSES["decoder", decoder]
    if (config, decoder) != (CONFORMER, "samba_asr"):
        return
    # the whole swap (both lines): one training step's loss and gradients on 0.5 s of audio
    speech = torch.randn(2, 8000)
    text_ids = torch.randint(2, VOCAB - 1, (2, 5))
    loss, _, _ = model(speech, torch.tensor([8000, 6000]), text_ids, torch.tensor([5, 3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.encoder.parameters() if p.requires_grad)


def test_without_espnet_classes_every_unknown_key_is_a_typo():
    """If what ESPnet's classes take cannot be read, the error still names every key."""
    from espnet_mamba.modules.factory import unknown_options_error

    err = unknown_options_error("SambaASREncoder", "encoder_conf",
                                {"output_size": 256, "num_block": 2, "macaron_style": True},
                                ["input_size", "output_size", "num_blocks"],
                                ["output_size", "num_blocks"], others=[])
    assert err.delete == {} and err.keep == ["output_size"]
    assert err.unknown == {"num_block": "num_blocks", "macaron_style": None}
    assert "    macaron_style: true    <- no option of this name is close" in str(err)


def build_from_command_line(asr_task, token_list: Path, *cli):
    """What asr_train does with options given on its command line."""
    args = asr_task.get_parser().parse_args(["--token_list", str(token_list), *cli])
    return asr_task.build_model(args)


@pytest.mark.parametrize("part,option", [("encoder", "num_block"), ("decoder", "num_blcks")])
def test_misspelt_option_through_build_model_is_named(part, option, asr_task, token_list):
    """What a user of asr_train sees for a misspelt key in encoder_conf/decoder_conf given on
    the command line: a TypeError naming the conf, the class and the option, with the closest
    valid one (modules/factory.py: named_options)."""
    cls = {"encoder": "SambaASREncoder", "decoder": "SambaASRDecoder"}[part]
    with pytest.raises(TypeError, match=(
            rf"(?s)^{part}_conf of {cls}: 1 option that .*\n  1 unknown option, .*"
            rf"\n    {option}: 1    <- did you mean 'num_blocks'\?\n")):
        build_from_command_line(asr_task, token_list, "--encoder", "samba_asr",
                                "--decoder", "samba_asr", f"--{part}_conf", f"{option}=1")


def test_misspelt_option_lists_the_valid_ones(asr_task, token_list):
    with pytest.raises(TypeError, match=r"every option of SambaASREncoder \(encoder_conf\): "
                                        r"output_size, num_blocks, .*recompute_input_layer, backend, .*cuda_graph_conf$"):
        build_from_command_line(asr_task, token_list, "--encoder", "samba_asr",
                                "--encoder_conf", "num_block=1")


@pytest.mark.slow
def test_asr_train_fails_at_model_build_not_at_print_config(espnet_root, token_list, tmp_path):
    text = swap((espnet_root / CONFORMER).read_text(), "encoder", "samba_asr")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    train = [sys.executable, "-m", "espnet2.bin.asr_train", "--config", str(config)]
    printed = subprocess.run([*train, "--print_config"], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert yaml.safe_load(printed.stdout)["encoder"] == "samba_asr"
    missing = tmp_path / "no_such_data"  # never read: the model is built first
    run = subprocess.run(
        [*train, "--token_list", str(token_list), "--output_dir", str(tmp_path / "exp"),
         "--train_data_path_and_name_and_type", f"{missing}/wav.scp,speech,sound",
         "--train_data_path_and_name_and_type", f"{missing}/text,text,text",
         "--train_shape_file", f"{missing}/speech_shape",
         "--valid_data_path_and_name_and_type", f"{missing}/wav.scp,speech,sound",
         "--valid_shape_file", f"{missing}/speech_shape"],
        capture_output=True, text=True)
    assert run.returncode != 0
    assert "in build_model" in run.stderr and "No such file" not in run.stderr
    assert ("UnknownOptionsError: encoder_conf of SambaASREncoder: 12 options that "
            "SambaASREncoder does not take") in run.stderr
    assert "  delete 12 lines of encoder_conf, options of ESPnet's conformer encoder" \
        in run.stderr
