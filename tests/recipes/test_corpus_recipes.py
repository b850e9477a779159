"""The paper-scale recipes egs2/{librispeech,gigaspeech,spgispeech}/asr1 and the configs of
egs2/librispeech_100/asr1, checked on a CPU.

* every training config under conf/tuning/ goes through ESPnet's own parser (unknown keys are an
  error there, as in asr_train) and ``ASRTask.build_model`` with a token list of the recipe's size
  (asr.sh's BPE token list has exactly ``--nbpe`` entries: sentencepiece's <unk>, <s>, </s> are
  replaced by <blank>, <unk>, <sos/eos>); its parameter count must lie within the band its
  ``# target_params:`` comment states, and a count the comment gives for the config itself
  ("this config with the recipe's 5000 BPE tokens: 38.16M") must be the measured one; one
  forward/backward on ~2 s of audio (batch 2);
* librispeech_100 (configs from ESPnet's source distribution, tools/fetch_espnet_recipes.sh):
  ESPnet's E-Branchformer and Conformer have the counts our README and configs state, our
  models target the E-Branchformer's, and every training option other than the model is the
  E-Branchformer's (ESPnet's recipe for this corpus);
* every decode config parses and has only keys that ``asr_inference`` accepts; Speech-Mamba
  decodes with CTC weight 0.4 as published; the LM configs parse with LMTask's parser;
* conf/train_asr.yaml / decode_asr.yaml / train_lm.yaml (not for librispeech_100: no LM) are
  links into conf/tuning/;
* run.sh against a stand-in ESPnet checkout whose asr.sh records its arguments: the configs,
  the upstream options and the user's options (unchanged, last) reach asr.sh; TEMPLATE scripts
  and the corpus's local/ (gigaspeech, spgispeech; librispeech has its own) are linked, not
  copied; path.sh finds the checkout; a missing checkout is a clear error naming --espnet_root
  and ESPNET_ROOT.  (tests/recipes/test_librispeech_recipes.py runs the LibriSpeech recipes
  with the real asr.sh.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EGS2 = REPO / "egs2"
CORPORA = ("librispeech", "gigaspeech", "spgispeech")
# what each run.sh must hand to asr.sh (from ESPnet's own recipe of the corpus)
UPSTREAM = {
    "librispeech": {"--train_set": "train_960", "--valid_set": "dev",
                    "--test_sets": "test_clean test_other dev_clean dev_other",
                    "--nbpe": "5000", "--speed_perturb_factors": "0.9 1.0 1.1",
                    "--max_wav_duration": "30", "--use_lm": "true",
                    "--bpe_train_text": "data/train_960/text",
                    # no LM corpus in data/local/other_text: the transcripts only
                    "--lm_train_text": "data/train_960/text", "--skip_packing": "false",
                    "--local_data_opts": "--train_set train_960 --train_parts "
                                         "train-clean-100,train-clean-360,train-other-500"},
    "gigaspeech": {"--train_set": "train", "--valid_set": "dev", "--test_sets": "dev test",
                   "--nbpe": "5000", "--speed_perturb_factors": "", "--max_wav_duration": "30",
                   "--use_lm": "false", "--audio_format": "flac.ark",
                   "--bpe_train_text": "data/train/text", "--skip_packing": "false"},
    "spgispeech": {"--train_set": "train_nodev", "--valid_set": "dev_4k",
                   "--test_sets": "dev_4k val", "--nbpe": "5000",
                   "--speed_perturb_factors": "", "--score_opts": "-s",
                   "--bpe_train_text": "data/train_nodev/text", "--skip_packing": "false"},
}
LINKED = ("asr.sh", "utils", "steps", "pyscripts", "scripts", "db.sh", "cmd.sh")
OWN_LOCAL = ("librispeech",)  # recipes with their own local/ (not ESPnet's)
# corpora whose configs are checked here (librispeech_100's run.sh runs with ESPnet's real asr.sh
# in tests/recipes/test_librispeech_recipes.py); NO_LM: the recipe trains no LM (as ESPnet's)
CONFIG_CORPORA = (*CORPORA, "librispeech_100")
NO_LM = ("librispeech_100",)
# ESPnet's own models that a recipe's configs are sized and trained like: config under ESPnet's
# egs2/ -> parameter count with the recipe's 5000 BPE tokens (espnet 202611, measured)
ESPNET_MODELS = {
    "librispeech_100": {
        # E-Branchformer, the default: the size target and the training options of our configs
        "librispeech_100/asr1/conf/train_asr.yaml": 38.47e6,
        "librispeech_100/asr1/conf/tuning/"
        "train_asr_conformer_lr2e-3_warmup15k_amp_nondeterministic.yaml": 34.23e6,
    },
}
MODEL_KEYS = ("encoder", "encoder_conf", "decoder", "decoder_conf")


def recipe(corpus: str) -> Path:
    return EGS2 / corpus / "asr1"


def nbpe(corpus: str) -> int:
    m = re.search(r"--nbpe\s+(\d+)", (recipe(corpus) / "run.sh").read_text())
    assert m, f"{corpus}/asr1/run.sh passes no --nbpe"
    return int(m.group(1))


def configs(pattern):
    return [pytest.param(c, p, id=f"{c}-{p.stem}") for c in CONFIG_CORPORA
            for p in sorted((recipe(c) / "conf" / "tuning").glob(pattern))]


def target_params(path: Path):
    m = re.search(r"^# target_params:\s*([\d.]+)M\s*\+-\s*([\d.]+)%", path.read_text(), re.M)
    assert m, f"{path}: no '# target_params: <N>M +-<P>%' comment"
    return float(m.group(1)) * 1e6, float(m.group(2)) / 100


def stated_own_params(path: Path):
    """The count a config's comment gives for itself ("this config with the recipe's 5000 BPE
    tokens: 38.16M"), or None where it gives none."""
    m = re.search(r"this config with the recipe's (\d+) BPE tokens: ([\d.]+)M", path.read_text())
    return (int(m.group(1)), float(m.group(2)) * 1e6) if m else None


# --------------------------------------------------------------------------------------------
# configs

def test_every_recipe_ships_configs():
    for c in CONFIG_CORPORA:
        tuning = recipe(c) / "conf" / "tuning"
        names = {p.name for p in tuning.glob("*.yaml")}
        assert any(n.startswith("train_asr_speech_mamba") for n in names), (c, names)
        assert any(n.startswith("train_asr_samba_asr") for n in names), (c, names)
        assert {"decode_speech_mamba.yaml", "decode_samba_asr.yaml"} <= names, (c, names)


@pytest.mark.parametrize("corpus", CONFIG_CORPORA)
def test_default_configs_are_links_into_tuning(corpus):
    conf = recipe(corpus) / "conf"
    lm = () if corpus in NO_LM else ("train_lm.yaml",)
    for name in ("train_asr.yaml", "decode_asr.yaml", *lm):
        link = conf / name
        assert link.is_symlink(), f"{link} must be a link to a file in conf/tuning"
        target = os.readlink(link)
        assert target.startswith("tuning/") and link.resolve().is_file(), (link, target)
    # the default decode config belongs to the default model (CTC weight of that model)
    encoder = yaml.safe_load((conf / "train_asr.yaml").read_text())["encoder"]
    assert os.readlink(conf / "decode_asr.yaml") == f"tuning/decode_{encoder}.yaml"


@pytest.fixture(scope="module")
def asr_task():
    from espnet2.tasks.asr import ASRTask

    return ASRTask


@pytest.fixture
def one_thread():
    """The tensors of these short steps are small: one intra-op thread is faster than two, and
    much faster when other jobs share the CPU (OpenMP workers then wait on each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(asr_task, config: Path, vocab: int, tmp_path: Path):
    """What asr_train does with --config: parse (unknown keys are errors), build the model."""
    token_list = tmp_path / "tokens.txt"
    tokens = ["<blank>", "<unk>", *(f"tok{i}" for i in range(vocab - 3)), "<sos/eos>"]
    token_list.write_text("\n".join(tokens) + "\n")
    args = asr_task.get_parser().parse_args(["--config", str(config), "--token_list",
                                             str(token_list)])
    return asr_task.build_model(args)


@pytest.mark.parametrize("corpus,config", configs("train_asr_*.yaml"))
def test_train_config_builds_at_stated_size_and_trains(corpus, config, asr_task, tmp_path,
                                                         one_thread):
    import torch

    vocab = nbpe(corpus)
    torch.manual_seed(0)
    model = build(asr_task, config, vocab, tmp_path)
    n = sum(p.numel() for p in model.parameters())
    want, tol = target_params(config)
    print(f"\n[{corpus}/{config.name}] {n / 1e6:.2f}M parameters with {vocab} tokens "
          f"(target {want / 1e6:.2f}M +-{tol:.0%}; encoder "
          f"{sum(p.numel() for p in model.encoder.parameters()) / 1e6:.2f}M, decoder "
          f"{sum(p.numel() for p in model.decoder.parameters()) / 1e6:.2f}M)")
    assert abs(n - want) <= tol * want, (
        f"{config}: {n / 1e6:.2f}M parameters, stated {want / 1e6:.2f}M +-{tol:.0%}")
    own = stated_own_params(config)
    if own is not None:  # the count the comment (and the recipe README) gives, to its 2 decimals
        assert own[0] == vocab, f"{config}: states its count for {own[0]} tokens, run.sh: {vocab}"
        assert abs(n - own[1]) <= 0.005e6, (
            f"{config}: {n / 1e6:.3f}M parameters, its comment says {own[1] / 1e6:.2f}M")

    # the config says which model it is
    conf = yaml.safe_load(config.read_text())
    assert type(model.encoder).__module__.startswith("espnet_mamba."), type(model.encoder)
    assert type(model.decoder).__module__.startswith("espnet_mamba."), type(model.decoder)
    assert conf["encoder"] in config.name and conf["decoder"] in config.name

    # one training step's forward/backward on ~2 s of audio, batch 2
    model.train()
    speech = torch.randn(2, 32000) * 0.1
    speech_lengths = torch.tensor([32000, 24000])
    text = torch.randint(2, vocab - 1, (2, 6))
    text_lengths = torch.tensor([6, 4])
    text[1, 4:] = -1
    loss, stats, _ = model(speech, speech_lengths, text, text_lengths)
    assert torch.isfinite(loss), stats
    loss.backward()
    no_grad = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:10]} ({len(no_grad)})"
    bad = [k for k, p in model.named_parameters()
           if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad[:10]}"


@pytest.fixture(scope="module")
def inference_keys():
    from espnet2.bin.asr_inference import get_parser

    return {a.dest for a in get_parser()._actions}


@pytest.mark.parametrize("corpus,config", configs("decode_*.yaml"))
def test_decode_config(corpus, config, inference_keys):
    conf = yaml.safe_load(config.read_text())
    assert isinstance(conf, dict) and conf, config
    unknown = sorted(set(conf) - inference_keys)
    assert not unknown, f"{config}: keys asr_inference does not accept: {unknown}"
    for key in ("beam_size", "ctc_weight", "lm_weight"):
        assert key in conf, f"{config}: no {key}"
    assert conf["beam_size"] >= 1 and 0.0 <= conf["ctc_weight"] <= 1.0
    if "speech_mamba" in config.name:
        assert conf["ctc_weight"] == 0.4, "Speech-Mamba decodes with CTC weight 0.4 (published)"
    if "use_lm false" in (recipe(corpus) / "run.sh").read_text().replace('"', ""):
        assert conf["lm_weight"] == 0.0, f"{corpus} decodes without an LM"


# --------------------------------------------------------------------------------------------
# ESPnet's own models of a corpus (its source distribution's egs2/)

@pytest.fixture(scope="module")
def espnet_egs2() -> Path:
    proc = subprocess.run(["bash", str(REPO / "tools" / "fetch_espnet_recipes.sh")],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"tools/fetch_espnet_recipes.sh failed:\n{proc.stderr}"
    egs2 = Path(proc.stdout.strip().splitlines()[-1]) / "egs2"
    assert egs2.is_dir(), f"no egs2/ in ESPnet's source distribution: {egs2}"
    return egs2


@pytest.mark.parametrize("corpus,config,count", [
    pytest.param(c, f, n, id=f"{c}-{Path(f).stem}")
    for c, models in ESPNET_MODELS.items() for f, n in models.items()])
def test_espnet_model_has_the_stated_size(corpus, config, count, espnet_egs2, asr_task,
                                           tmp_path):
    model = build(asr_task, espnet_egs2 / config, nbpe(corpus), tmp_path)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - count) <= 0.005e6, (
        f"ESPnet's egs2/{config}: {n / 1e6:.3f}M parameters, stated {count / 1e6:.2f}M")


@pytest.mark.parametrize("corpus", list(ESPNET_MODELS))
def test_configs_sized_and_trained_like_espnets_default(corpus, espnet_egs2):
    default, count = next(iter(ESPNET_MODELS[corpus].items()))
    theirs = yaml.safe_load((espnet_egs2 / default).read_text())
    training = {k: v for k, v in theirs.items() if k not in MODEL_KEYS}
    tuning = recipe(corpus) / "conf" / "tuning"
    ours = [p for m in ("samba_asr", "speech_mamba")
            for p in sorted(tuning.glob(f"train_asr_{m}_e*.yaml"))]
    assert len(ours) == 2, f"{tuning}: want one Samba-ASR and one Speech-Mamba config, {ours}"
    for config in ours:
        want, _ = target_params(config)
        assert abs(want - count) <= 0.005e6, (
            f"{config.name} targets {want / 1e6:.2f}M; ESPnet's egs2/{default} has "
            f"{count / 1e6:.2f}M")
        conf = yaml.safe_load(config.read_text())
        mine = {k: v for k, v in conf.items() if k not in MODEL_KEYS}
        differ = {k: (mine.get(k, "-"), training.get(k, "-"))
                  for k in sorted({*mine, *training}) if mine.get(k) != training.get(k)}
        assert not differ, f"{config.name} vs ESPnet's egs2/{default} (ours, theirs): {differ}"


@pytest.mark.parametrize("corpus", CORPORA)
def test_lm_config_parses(corpus, tmp_path):
    from espnet2.tasks.lm import LMTask

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("<blank>\n<unk>\na\n<sos/eos>\n")
    args = LMTask.get_parser().parse_args(
        ["--config", str(recipe(corpus) / "conf" / "train_lm.yaml"), "--token_list", str(tokens)])
    assert args.lm in ("transformer", "seq_rnn"), args.lm


# --------------------------------------------------------------------------------------------
# run.sh against a stand-in ESPnet checkout

STANDIN_ASR_SH = r"""#!/usr/bin/env bash
# stand-in for ESPnet's egs2/TEMPLATE/asr1/asr.sh: record the arguments, one per line (NUL-safe
# enough here: no argument of these tests holds a newline), and what path.sh sets
set -euo pipefail
printf '%s\n' "$@" > "${RECORD}"
pwd -P > "${RECORD}.cwd"
. ./path.sh
echo "${MAIN_ROOT}" > "${RECORD}.main_root"
echo "${CORPUS_LOCAL_PATH_SH:-unset}" > "${RECORD}.local_path"
"""
# the real TEMPLATE path.sh finds the checkout this way, then sources local/path.sh
STANDIN_PATH_SH = "MAIN_ROOT=$PWD/../../..\n. local/path.sh\n"


def make_standin(root: Path, corpus: str) -> Path:
    template = root / "egs2" / "TEMPLATE" / "asr1"
    for d in ("utils", "steps", "pyscripts", "scripts"):
        (template / d).mkdir(parents=True, exist_ok=True)
        (template / d / "marker").write_text(d)
    (template / "asr.sh").write_text(STANDIN_ASR_SH)
    (template / "asr.sh").chmod(0o755)
    (template / "path.sh").write_text(STANDIN_PATH_SH)
    (template / "db.sh").write_text("LIBRISPEECH=downloads\n")
    (template / "cmd.sh").write_text("export train_cmd=run.pl\n")
    local = root / "egs2" / corpus / "asr1" / "local"
    local.mkdir(parents=True)
    (local / "data.sh").write_text("#!/usr/bin/env bash\n")
    (local / "path.sh").write_text(f"CORPUS_LOCAL_PATH_SH={corpus}\n")
    return root


def copy_recipe(tmp: Path, corpus: str) -> Path:
    """This repository's recipe (run.sh, conf/, links) and shared scripts, in a scratch tree, so
    that the links run.sh makes land there and not in the working copy."""
    dst = tmp / "repo" / "egs2"
    dst.mkdir(parents=True)
    for f in EGS2.glob("*.sh"):
        shutil.copy(f, dst / f.name)
    def ignore(directory, names):  # what run.sh links, and asr.sh's outputs
        made = shutil.ignore_patterns(*LINKED, "data", "dump*", "exp*")(directory, names)
        return made | {n for n in names if n == "local" and Path(directory, n).is_symlink()}

    shutil.copytree(recipe(corpus), dst / corpus / "asr1", symlinks=True, ignore=ignore)
    return dst / corpus / "asr1"


def run_sh(recipe_dir: Path, args, env_root=None, record=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "ESPNET_ROOT"}
    if env_root is not None:
        env["ESPNET_ROOT"] = str(env_root)
    if record is not None:
        env["RECORD"] = str(record)
    return subprocess.run(["bash", str(recipe_dir / "run.sh"), *map(str, args)],
                          cwd=cwd or recipe_dir.parent, env=env, capture_output=True, text=True,
                          timeout=60)


def recorded_options(record: Path):
    """asr.sh's arguments as (option, value) pairs, in order (every option here has a value)."""
    lines = record.read_text().split("\n")[:-1]
    assert len(lines) % 2 == 0 and all(o.startswith("--") for o in lines[::2]), lines
    return list(zip(lines[::2], lines[1::2]))


USER_ARGS = ["--stage", "11", "--stop_stage", "13", "--ngpu", "2", "--nj", "7",
             "--inference_args", "--beam_size 5 --nbest 2", "--asr_tag", "my tag"]


@pytest.mark.parametrize("corpus", CORPORA)
def test_run_sh_calls_asr_sh_with_recipe_configs(corpus, tmp_path):
    root = make_standin(tmp_path / "espnet", corpus)
    rdir = copy_recipe(tmp_path, corpus)
    record = tmp_path / "args.txt"
    # --espnet_root anywhere among the user's options; run from another directory
    args = USER_ARGS[:4] + ["--espnet_root", root] + USER_ARGS[4:]
    proc = run_sh(rdir, args, record=record, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    opts = recorded_options(record)
    d = {}
    for k, v in opts:
        d.setdefault(k, v)  # first occurrence: the recipe's own value
    assert d["--asr_config"] == "conf/train_asr.yaml"
    assert d["--inference_config"] == "conf/decode_asr.yaml"
    assert d["--lm_config"] == "conf/train_lm.yaml"
    for k, v in UPSTREAM[corpus].items():
        assert d.get(k) == v, f"{k}: want {v!r}, got {d.get(k)!r}"
    assert d["--feats_type"] == "raw"
    # configs the recipe names exist in the recipe
    for k in ("--asr_config", "--inference_config", "--lm_config"):
        assert (rdir / d[k]).is_file(), d[k]
    # the user's options, unchanged and last (so they override the recipe's), no --espnet_root
    assert opts[-len(USER_ARGS) // 2:] == list(zip(USER_ARGS[::2], USER_ARGS[1::2]))
    assert not any("espnet_root" in k or "espnet_root" in v for k, v in opts)
    # asr.sh ran in the recipe directory, whose machinery is linked, not copied
    assert Path(record.with_suffix(".txt.cwd").read_text().strip()) == rdir.resolve()
    template = root.resolve() / "egs2" / "TEMPLATE" / "asr1"
    for name in LINKED:
        assert (rdir / name).is_symlink(), name
        assert (rdir / name).resolve() == template / name, name
    if corpus in OWN_LOCAL:
        assert (rdir / "local").is_dir() and not (rdir / "local").is_symlink()
    else:
        assert (rdir / "local").is_symlink()
        assert (rdir / "local").resolve() == root.resolve() / "egs2" / corpus / "asr1" / "local"
    # path.sh: ESPnet's TEMPLATE path.sh sees the checkout as MAIN_ROOT, reads the recipe's
    # local/path.sh (the stand-in checkout's one sets CORPUS_LOCAL_PATH_SH)
    main_root = Path(record.with_suffix(".txt.main_root").read_text().strip())
    assert main_root.resolve() == root.resolve()
    assert record.with_suffix(".txt.local_path").read_text().strip() == (
        "unset" if corpus in OWN_LOCAL else corpus)


def test_run_sh_uses_env_root_and_equals_form_and_keeps_own_files(tmp_path):
    corpus = "gigaspeech"
    root = make_standin(tmp_path / "espnet", corpus)
    other = make_standin(tmp_path / "espnet2", corpus)
    rdir = copy_recipe(tmp_path, corpus)
    (rdir / "db.sh").write_text("GIGASPEECH=/my/data\n")  # the user's own db.sh
    record = tmp_path / "args.txt"
    proc = run_sh(rdir, ["--stage", "1"], env_root=root, record=record)
    assert proc.returncode == 0, proc.stderr
    assert (rdir / "asr.sh").resolve().parent == (root / "egs2/TEMPLATE/asr1").resolve()
    assert not (rdir / "db.sh").is_symlink() and "/my/data" in (rdir / "db.sh").read_text()
    assert "keeping your own" in proc.stderr
    # --espnet_root=DIR wins over ESPNET_ROOT; the links follow the new checkout
    proc = run_sh(rdir, [f"--espnet_root={other}", "--stage", "2"], env_root=root,
                  record=record)
    assert proc.returncode == 0, proc.stderr
    assert (rdir / "asr.sh").resolve().parent == (other / "egs2/TEMPLATE/asr1").resolve()
    assert (rdir / "local").resolve() == (other / "egs2" / corpus / "asr1" / "local").resolve()
    assert recorded_options(record)[-1] == ("--stage", "2")


def test_run_sh_without_checkout_is_a_clear_error(tmp_path):
    rdir = copy_recipe(tmp_path, "librispeech")
    proc = run_sh(rdir, ["--stage", "1"])
    assert proc.returncode != 0
    assert "--espnet_root" in proc.stderr and "ESPNET_ROOT" in proc.stderr, proc.stderr
    assert not (rdir / "asr.sh").exists()


def test_run_sh_with_a_directory_that_is_no_checkout(tmp_path):
    rdir = copy_recipe(tmp_path, "gigaspeech")
    not_espnet = tmp_path / "not_espnet"
    not_espnet.mkdir()
    proc = run_sh(rdir, ["--espnet_root", not_espnet])
    assert proc.returncode != 0
    assert "egs2/TEMPLATE/asr1/asr.sh" in proc.stderr and "ESPNET_ROOT" in proc.stderr, (
        proc.stderr)
    # a checkout without this corpus's recipe: says which local/ is missing
    root = make_standin(tmp_path / "espnet", "librispeech")
    proc = run_sh(rdir, [], env_root=root)
    assert proc.returncode != 0 and "egs2/gigaspeech/asr1/local" in proc.stderr, proc.stderr
