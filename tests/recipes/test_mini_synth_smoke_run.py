"""Smoke run of the offline recipe egs2/mini_synth/asr1 (`run.sh --smoke true`).

The run is the ``smoke_run`` fixture (conftest.py, mini_synth_smoke.py): with
MINI_SYNTH_SMOKE_RUN=<recipe dir> the tests check that directory's finished smoke run (CI makes
it with the README's main command, ``bash tools/run_main.sh --smoke true``) instead of running
the recipe again in a copy.

Every stage runs (corpus synthesis, token lists, stats, one training epoch, decoding, scoring,
packing) on a tiny corpus in a copy of the recipe under pytest's tmp dir; about 3-4 minutes on
a 2-core CPU.  The TTS tools are required: when espeak-ng, flite, sox or py-nanotts are missing
the test fails (it does not skip) and says how to install them.

The zip of stage 7 is then used as a downloader would: ``Speech2Text.from_pretrained(zip)``
(espnet_model_zoo unpacks it into a fresh cache directory) in a subprocess that runs the plugin's
PyTorch path with the CUDA kernels made unimportable, with the recipe's experiment directory moved
away; it must decode test utterances to exactly the recipe's own stage-5 hypotheses.
"""

from __future__ import annotations

import json
import os
import shlex
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mini_synth_smoke import INSTALL_HINT, TIMEOUT, missing_tools, tail

pytestmark = pytest.mark.slow



def test_recipe_tools_installed():
    missing = missing_tools()
    assert not missing, f"the mini_synth recipe needs {', '.join(missing)}: {INSTALL_HINT}"


def test_smoke_results_and_pack(smoke_run):
    rc, recipe, log = smoke_run
    assert rc == 0, f"run.sh --smoke true failed (rc={rc}):\n{tail(log)}"
    exps = [p for p in (recipe / "exp_smoke").glob("asr_*") if not p.name.startswith("asr_stats")]
    assert len(exps) == 1, f"expected one experiment dir, got {exps}"
    exp = exps[0]

    results = exp / "RESULTS.md"
    assert results.exists(), f"{results} missing\n{tail(log)}"
    text = results.read_text()
    test_sets = sorted(p.name for p in (recipe / "dump_smoke" / "raw").iterdir()
                       if p.name == "test" or p.name.startswith("test_"))
    assert "test" in test_sets and len(test_sets) == 4, test_sets  # test + 3 long-context sets
    for metric in ("WER", "CER"):
        section = text.split(f"### {metric}", 1)
        assert len(section) == 2, f"no {metric} table in {results}:\n{text}"
        body = section[1].split("###", 1)[0]
        for dset in test_sets:
            row = re.search(rf"^\|[^|]*/{re.escape(dset)}\|(\d+)\|(\d+)\|([\d.]+)\|([\d.]+)\|"
                            rf"([\d.]+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|$", body, re.M)
            assert row, f"no {metric} row for {dset} in {results}:\n{text}"
            assert int(row.group(1)) > 0 and int(row.group(2)) > 0

    zips = list(exp.glob("*.zip"))
    assert zips and zips[0].stat().st_size > 0, f"no packed model in {exp}\n{tail(log)}"
    import zipfile

    with zipfile.ZipFile(zips[0]) as z:
        names = z.namelist()
    assert any(n.endswith("config.yaml") for n in names), names
    assert any(n.endswith(".pth") for n in names), names


# Decode wavs with the packed model as a downloader does: Speech2Text.from_pretrained(zip), with
# the recipe's own decoding options (its stage-5 command line, parsed by asr_inference's parser)
# and mamba-ssm / causal-conv1d unimportable.  Prints {utt: text} and what kernels were imported.
ZOO_DECODE = r"""
import inspect, json, sys
for name in ("mamba_ssm", "causal_conv1d", "selective_scan_cuda", "causal_conv1d_cuda"):
    sys.modules[name] = None  # "import mamba_ssm" now raises ImportError
import soundfile
from espnet2.bin.asr_inference import Speech2Text, get_parser

zip_file, argv, wavs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
args = vars(get_parser().parse_args(argv))
params = set(inspect.signature(Speech2Text.__init__).parameters)
opts = {k: v for k, v in args.items() if k in params
        and k not in ("self", "asr_train_config", "asr_model_file", "device")}
s2t = Speech2Text.from_pretrained(zip_file, device="cpu", **opts)
hyps = {}
for utt, path in sorted(wavs.items()):
    speech, _ = soundfile.read(path, dtype="float32")
    hyps[utt] = s2t(speech)[0][0]
print("RESULT " + json.dumps({
    "hyps": hyps, "opts": {k: opts[k] for k in ("beam_size", "ctc_weight", "maxlenratio")},
    "kernels": sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in
                      ("mamba_ssm", "causal_conv1d", "selective_scan_cuda")),
    "encoder": type(s2t.asr_model.encoder).__module__,
    "model_file": s2t.asr_model_file if hasattr(s2t, "asr_model_file") else None}))
"""
N_UTTS = 4


def recipe_decode(ddir: Path):
    """(asr_inference's argv, {utt: hypothesis}) of a stage-5 decoding directory."""
    log = ddir / "logdir" / "asr_inference.1.log"
    line = next(x for x in log.read_text().splitlines() if "asr_inference" in x and " --" in x)
    words = shlex.split(line)
    i = next(j for j, w in enumerate(words) if w.endswith(("asr_inference.py",
                                                           "espnet2.bin.asr_inference")))
    hyps = {}
    for x in (ddir / "text").read_text().splitlines():
        utt, _, text = x.partition(" ")
        hyps[utt] = text.strip()
    return words[i + 1:], hyps


def with_backend(src: Path, dst: Path, backend: str) -> None:
    """A copy of a packed model whose config.yaml says ``backend`` for the encoder and decoder,
    as a model packed on a GPU machine with ``backend: cuda`` would."""
    import zipfile

    import yaml

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("config.yaml"):
                conf = yaml.safe_load(data)
                for part in ("encoder", "decoder"):
                    if isinstance(conf.get(f"{part}_conf"), dict):
                        conf[f"{part}_conf"]["backend"] = backend
                data = yaml.safe_dump(conf).encode()
            zout.writestr(item, data)


# None: the zip as packed.  "cuda": the same weights with `backend: cuda` in the packed config:
# a model is weights, where it runs is chosen at run time (the PyTorch path on a CPU, one notice)
@pytest.mark.parametrize("packed_backend", [None, "cuda"])
def test_packed_model_decodes_like_the_recipe(smoke_run, tmp_path, packed_backend):
    import zipfile

    rc, recipe, log = smoke_run
    assert rc == 0, f"run.sh --smoke true failed (rc={rc}):\n{tail(log)}"
    exp = next(p for p in (recipe / "exp_smoke").glob("asr_*")
               if not p.name.startswith("asr_stats"))
    zip_file = next(exp.glob("*.zip"))
    with zipfile.ZipFile(zip_file) as z:
        cards = [n for n in z.namelist() if n.endswith("README.md")]
        assert cards, f"no model card in {zip_file}: {z.namelist()}"
        card = z.read(cards[0]).decode()
    assert "pip install" in card and "espnet-mamba" in card, card[:2000]
    assert "SambaASREncoder" in card and "conf/train_asr.yaml" in card, card[:3000]
    assert "### WER" in card or "#### WER" in card, card  # the results

    ddir = next(exp.glob("decode_*")) / "test"
    argv, want = recipe_decode(ddir)
    # the recipe's --config is relative to the recipe directory; nothing else of argv is read
    argv = [str(recipe / a) if argv[k - 1] == "--config" else a for k, a in enumerate(argv)]
    wav_scp = dict(x.split(maxsplit=1) for x in
                   (recipe / "dump_smoke/raw/test/wav.scp").read_text().splitlines())
    utts = sorted(want)[:N_UTTS]
    wavs = {u: str((recipe / wav_scp[u]).resolve()) for u in utts}
    assert all(Path(p).is_file() for p in wavs.values()), wavs

    copy = tmp_path / zip_file.name  # outside the recipe, which is moved away below
    if packed_backend:
        with_backend(zip_file, copy, packed_backend)
    else:
        shutil.copy(zip_file, copy)
    script = tmp_path / "zoo_decode.py"
    script.write_text(ZOO_DECODE)
    home = tmp_path / "home"  # espnet_model_zoo unpacks into ~/.cache/espnet_model_zoo
    home.mkdir()
    env = dict(os.environ, HOME=str(home), ESPNET_MAMBA_BACKEND="torch", CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("ESPNET_MAMBA_DISABLE_HOOK", None)
    env.pop("ESPNET_MAMBA_EXECUTION", None)
    if packed_backend == "cuda":  # the config decides here (the environment would override it)
        env.pop("ESPNET_MAMBA_BACKEND")
    moved = recipe.parent / "exp_smoke_moved_away"
    (recipe / "exp_smoke").rename(moved)  # the zip must be all the decode needs
    try:
        proc = subprocess.run([sys.executable, script, copy, json.dumps(argv), json.dumps(wavs)],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)
    finally:
        moved.rename(recipe / "exp_smoke")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    if packed_backend == "cuda":
        assert "backend='cuda' but the model runs on cpu" in proc.stderr, proc.stderr[-4000:]
    got = json.loads(next(x for x in proc.stdout.splitlines()
                          if x.startswith("RESULT "))[len("RESULT "):])
    assert got["kernels"] == [], got["kernels"]
    assert got["encoder"].startswith("espnet_mamba."), got["encoder"]
    cache = home / ".cache" / "espnet_model_zoo"
    assert any(cache.rglob("config.yaml")), "from_pretrained did not unpack into the fresh cache"
    print(f"\npacked model via from_pretrained ({got['opts']}): " + ", ".join(
        f"{u}: {want[u]!r} / {got['hyps'][u]!r}" for u in utts))
    # the recipe's text file (one "utt words" line each) cannot keep a hypothesis' trailing
    # space, which a BPE model may end with: compare stripped texts
    assert {u: got["hyps"][u].strip() for u in utts} == {u: want[u].strip() for u in utts}
