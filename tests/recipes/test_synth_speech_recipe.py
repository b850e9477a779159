"""The synth_speech recipe end to end on a CPU: ``egs2/synth_speech/asr1/run.sh --smoke true``.

Every stage runs once (module fixture), with the data, dump and experiment folders under pytest's
tmp dir: a corpus of about a minute (``--hours 0.02``, long sets of 10 and 40 s), both token
lists, feature statistics, one epoch of the default config (Samba-ASR) shrunk to a tiny model
by command-line options, decoding of every test set, scoring, the WER-vs-length plot and
packing.  Checked: a RESULTS.md row (WER and CER) for every test set; the long sets are
test_long's utterances joined in order, one voice a recording, of about the asked lengths,
with the same words as test_long (so their WER measures length alone); the plot and the table
over the models; the packed zip holds the model, its config, the BPE model and the card.
The TTS tools are required: the test fails (does not skip) when they are missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "egs2" / "synth_speech" / "asr1"
TEST_SETS = ["test", "test_unseen_voice", "test_unseen_engine", "test_long", "test_long_10s",
             "test_long_40s"]
TIMEOUT = 900


def test_help_lists_every_option_and_unknown_ones_are_refused():
    lines = (RECIPE / "run.sh").read_text().splitlines()
    block = lines[lines.index("# " + "-" * 78 + " options") + 1:lines.index("# end of options")]
    names = [x.split("=", 1)[0] for x in block if "=" in x and x[:1].isalpha()]
    assert {"hours", "long_durations", "ngpu", "tts_prefix", "asr_config"} <= set(names), names
    proc = subprocess.run(["bash", str(RECIPE / "run.sh"), "--help"], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in names:
        assert f"  --{name} " in proc.stdout, (name, proc.stdout)
    proc = subprocess.run(["bash", str(RECIPE / "run.sh"), "--hourz", "3"], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "unknown option --hourz" in proc.stderr, proc.stderr


def missing_tools() -> list[str]:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import tts_corpus
    finally:
        sys.path.remove(str(REPO / "tools"))
    missing = tts_corpus.missing_tools()
    if not Path("/usr/share/wordnet/data.noun").is_file():
        missing.append("wordnet-base")
    return missing


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    missing = missing_tools()
    assert not missing, (f"the synth_speech recipe needs {', '.join(missing)}: run 'bash "
                         "tools/install_recipe_deps.sh' from the repository root")
    work = tmp_path_factory.mktemp("synth_speech_run")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    log = work / "run.log"
    cmd = ["bash", str(RECIPE / "run.sh"), "--smoke", "true", "--python", sys.executable,
           "--ngpu", "0", "--nj", "2"]
    for name in ("expdir", "dumpdir", "datadir", "wavdir"):
        cmd += [f"--{name}", str(work / name)]
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"run.sh --smoke true failed:\n{text[-6000:]}"
    exps = [p for p in (work / "expdir").glob("asr_*") if not p.name.startswith("asr_stats")]
    assert len(exps) == 1, exps
    return work, exps[0], text


def rows(results: str, metric: str) -> dict[str, list[str]]:
    body = results.split(f"### {metric}", 1)[1].split("###", 1)[0]
    out = {}
    for line in body.splitlines():
        m = re.match(r"^\|[^|]*/([^|/]+)\|(.*)\|$", line)
        if m:
            out[m.group(1)] = m.group(2).split("|")
    return out


def read_map(path: Path) -> dict[str, str]:
    return {k: v for k, _, v in (line.partition(" ") for line in path.read_text().splitlines())}


def test_results_for_every_set(smoke):
    work, exp, _ = smoke
    results = (exp / "RESULTS.md").read_text()
    assert "encoder: `samba_asr`, decoder: `samba_asr`, token_type: `bpe`" in results
    for metric in ("WER", "CER"):
        table = rows(results, metric)
        assert sorted(table) == sorted(TEST_SETS), (metric, sorted(table))
        for dset, cells in table.items():
            snt, wrd = int(cells[0]), int(cells[1])
            assert snt > 0 and wrd > 0, (metric, dset, cells)
            assert all(re.fullmatch(r"\d+\.\d", c) for c in cells[2:]), (metric, dset, cells)
        # every long set holds test_long's words: the same reference length
        assert {table[d][1] for d in TEST_SETS if d.startswith("test_long")} == \
            {table["test_long"][1]}, table
    # a hypothesis for every recording
    decode = next(exp.glob("decode_*"))
    for dset in TEST_SETS:
        hyp = [x.split(" ", 1)[0] for x in (decode / dset / "text").read_text().splitlines()]
        assert hyp == sorted(read_map(work / "dumpdir" / "raw" / dset / "text")), dset
    # the table over every model of the exp dir, and the plot against recording length
    combined = (work / "expdir" / "RESULTS.md").read_text()
    assert "|Samba-ASR|" in combined and "test_long_40s WER / CER" in combined, combined
    png = work / "expdir" / "wer_vs_length.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_long_sets_join_test_long_in_order(smoke):
    work, _, _ = smoke
    data = work / "datadir"
    short = read_map(data / "test_long" / "text")
    short_durs = {u: float(d) for u, d in read_map(data / "test_long" / "utt2dur").items()}
    spk = read_map(data / "test_long" / "utt2spk")
    assert len(set(spk.values())) == 1, "test_long has one voice (--long_voices 1)"
    words = " ".join(short[u] for u in sorted(short))
    for target in (10, 40):
        d = data / f"test_long_{target}s"
        text, durs = read_map(d / "text"), read_map(d / "utt2dur")
        assert " ".join(text[u] for u in sorted(text)) == words, f"{d}: not test_long in order"
        assert set(read_map(d / "utt2spk").values()) == set(spk.values())
        secs = [float(x) for x in durs.values()]
        # recordings of about the target: the utterances and a 0.2-0.6 s pause after each
        assert sum(short_durs.values()) + 0.2 * len(short) <= sum(secs) <= \
            sum(short_durs.values()) + 0.6 * len(short) + 1e-3, (d, secs)
        mean = sum(secs) / len(secs)
        assert 0.6 * target <= mean <= 1.6 * target, (d, secs)
        if target == 40:  # the longest set: every test_long utterance in one recording
            assert len(secs) == 1 and secs[0] > 30, secs
        wav = Path(read_map(d / "wav.scp")[sorted(text)[0]])
        info = sf.info(wav)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames / 16000 - float(durs[sorted(text)[0]])) < 1e-3


def test_packed_model(smoke):
    _, exp, log = smoke
    zips = list(exp.glob("*.zip"))
    assert len(zips) == 1, zips
    with zipfile.ZipFile(zips[0]) as z:
        names = z.namelist()
        card = z.read(next(n for n in names if n.endswith("README.md"))).decode()
    # the checkpoint is stored under the name valid.acc.ave.pth links to (1epoch.pth here)
    for suffix in ("config.yaml", ".pth", "bpe.model", "feats_stats.npz", "RESULTS.md"):
        assert any(n.endswith(suffix) for n in names), (suffix, names)
    assert "egs2/synth_speech/asr1" in card and "SambaASREncoder" in card, card[:2000]
    assert "finished: total" in log
