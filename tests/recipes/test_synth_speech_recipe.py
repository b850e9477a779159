"""The synth_speech recipe end to end on a CPU: ``egs2/synth_speech/asr1/run.sh --smoke true``.

Every stage runs once (module fixture), with the data, dump and experiment folders under pytest's
tmp dir: a corpus of about a minute (``--hours 0.02``, long sets of 10 and 40 s), both token
lists, feature statistics, one epoch of the default config (Samba-ASR) shrunk to a tiny model
by command-line options, decoding of every test set, scoring, the WER-vs-length plot and
packing.  Checked: a RESULTS.md row (WER and CER) for every test set; the long sets are
test_long's utterances joined in order, one voice a recording, of about the asked lengths,
with the same words as test_long (so their WER measures length alone); the plot and the table
over the models; the packed zip holds the model, its config (characters: no BPE model) and the card.
The TTS tools are required: the test fails (does not skip) when they are missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
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
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in names:
        assert f"  --{name} " in proc.stdout, (name, proc.stdout)
    proc = subprocess.run(["bash", str(RECIPE / "run.sh"), "--hourz", "3"], cwd="/",
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "unknown option --hourz" in proc.stderr, proc.stderr


@pytest.mark.parametrize("option,value,error", [
    ("--nthreads", "0", "--nthreads 0: a number of threads, 1 or more"),
    ("--decode_batch_size", "x", "--decode_batch_size x: a number of recordings, 1 or more"),
    ("--decode_batch_seconds", "0", "--decode_batch_seconds 0: a number of seconds above 0"),
])
def test_bad_numbers_are_refused_before_any_stage(option, value, error, tmp_path):
    proc = subprocess.run(["bash", str(RECIPE / "run.sh"), "--ngpu", "0", option, value,
                           "--expdir", str(tmp_path / "exp")], cwd="/", check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"ERROR: {error}" in proc.stderr, proc.stderr
    assert not (tmp_path / "exp").exists()


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
                              timeout=TIMEOUT, check=False)
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
    assert "encoder: `samba_asr`, decoder: `samba_asr`, token_type: `char`" in results
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
    assert "|Samba-ASR|1|" in combined and "test_long_40s WER / CER" in combined, combined
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
        wav = Path(read_map(d / "wav.scp")[min(text)])
        info = sf.info(wav)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames / 16000 - float(durs[min(text)])) < 1e-3


def test_packed_model(smoke):
    _, exp, log = smoke
    zips = list(exp.glob("*.zip"))
    assert len(zips) == 1, zips
    with zipfile.ZipFile(zips[0]) as z:
        names = z.namelist()
        card = z.read(next(n for n in names if n.endswith("README.md"))).decode()
    # the checkpoint is stored under the name valid.acc.ave.pth links to (1epoch.pth here)
    for suffix in ("config.yaml", ".pth", "feats_stats.npz", "RESULTS.md"):
        assert any(n.endswith(suffix) for n in names), (suffix, names)
    assert not any(n.endswith("bpe.model") for n in names), names  # the default is characters
    assert "egs2/synth_speech/asr1" in card and "SambaASREncoder" in card, card[:2000]
    assert "finished: total" in log


def test_comparison_trains_configs_side_by_side(smoke):
    """run_comparison.sh on the smoke corpus: two configs at once, one table over the models.
    With --train_minutes 0 and 40 epochs asked, each training is stopped at the end of its
    first completed epoch(s), and its best epochs are averaged, decoded, scored and packed.
    --decode_nj 2: each config decodes in 2 jobs (--nj 2 alone would give it 2 / 2 = 1)."""
    work, _, _ = smoke
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = ["bash", str(RECIPE / "run_comparison.sh"), "--skip_prepare", "true",
           "--configs", "conformer samba_asr", "--smoke", "true", "--python", sys.executable,
           "--ngpu", "0", "--nj", "2", "--decode_nj", "2", "--max_epoch", "40",
           "--train_minutes", "0"]
    for name in ("expdir", "dumpdir", "datadir", "wavdir"):
        cmd += [f"--{name}", str(work / name)]
    proc = subprocess.run(cmd, cwd=work, env=env, check=False, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-6000:]
    trained = {}
    for name in ("conformer", "samba_asr"):
        exp = work / "expdir" / f"asr_train_asr_{name}_raw_en_char"
        assert sorted(rows((exp / "RESULTS.md").read_text(), "WER")) == sorted(TEST_SETS), name
        assert (work / "expdir" / "comparison" / f"{name}.log").stat().st_size > 0
        # progress lines come back with the config's name in front
        assert f"[{name}] " in proc.stderr and f"{name}: exit 0" in proc.stderr, name
        # stopped by --train_minutes after n < 40 epochs: the packed config says n
        m = re.search(rf"{name}: --train_minutes 0 reached: training stopped after (\d+) epochs",
                      proc.stderr)
        assert m, proc.stderr[-3000:]
        epochs = trained[name] = int(m.group(1))
        assert 1 <= epochs < 40
        assert re.search(rf"^max_epoch: {epochs}$", (exp / "config.yaml").read_text(), re.MULTILINE)
        assert (exp / "train.stopped.log").read_text().count("epoch results") == epochs
        assert len(list(exp.glob("*.zip"))) == 1
        jobs = sorted(p.name for p in exp.glob("*/all_test_sets/logdir/keys.*"))
        assert jobs == ["keys.1", "keys.2"], jobs
    combined = (work / "expdir" / "RESULTS.md").read_text()
    # the table says how many epochs each model got
    assert f"|Conformer + Transformer|{trained['conformer']}|" in combined, combined
    assert f"|Samba-ASR|{trained['samba_asr']}|" in combined, combined


def test_combined_table_names_the_reading_and_the_epochs(tmp_path):
    """local/plot_results.py --table: Samba-ASR's readings of the cross-connection are told apart
    (the default, attention, unnamed; a run that records none predates the option: prefix), and
    each row has its model's epochs ("?" for a results.json written before they were kept)."""
    sets = {"test": {"WER": 10.0, "CER": 5.0, "mean_duration_s": 3.0}}
    runs = {"a": {"exp": "a", "encoder": "samba_asr", "decoder": "samba_asr", "max_epoch": 8,
                  "cross_connection": "attention", "sets": sets},
            "b": {"exp": "b", "encoder": "samba_asr", "decoder": "samba_asr", "max_epoch": 5,
                  "cross_connection": None, "sets": sets},
            "c": {"exp": "c", "encoder": "conformer", "decoder": "transformer", "sets": sets}}
    for name, run in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    proc = subprocess.run([sys.executable, str(RECIPE / "local" / "plot_results.py"), "--table",
                           *(str(tmp_path / f"{n}.json") for n in runs)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows_ = proc.stdout.splitlines()
    assert rows_[0] == "|model|epochs|test WER / CER|", rows_
    assert rows_[2:] == ["|Samba-ASR|8|10.0 / 5.0|", "|Samba-ASR (prefix reading)|5|10.0 / 5.0|",
                         "|Conformer + Transformer|?|10.0 / 5.0|"], rows_


def test_comparison_refuses_unknown_configs():
    proc = subprocess.run(["bash", str(RECIPE / "run_comparison.sh"), "--configs", "conformer nope"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no conf/tuning/train_asr_nope.yaml" in proc.stderr, proc.stderr
    proc = subprocess.run(["bash", str(RECIPE / "run_comparison.sh"), "--stage", "4"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--stage is chosen per config" in proc.stderr, proc.stderr
    proc = subprocess.run(["bash", str(RECIPE / "run_comparison.sh"), "--decode_nj", "0"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--decode_nj: not a number of jobs: 0" in proc.stderr, proc.stderr


# Loaded by every Python of the run through PYTHONPATH: ESPnet's reader opens recordings with
# soundfile.SoundFile, so the first opening of FAKE_OOM_WAV raises what PyTorch raises when the
# GPU is full (and leaves FAKE_OOM_MARK behind, so that a second try reads it).
FAKE_OOM = """
import os
if os.environ.get("FAKE_OOM_WAV"):
    import soundfile
    _SoundFile = soundfile.SoundFile

    def _open(file, *args, **kwargs):
        mark = os.environ["FAKE_OOM_MARK"]
        if str(file) == os.environ["FAKE_OOM_WAV"] and not os.path.exists(mark):
            open(mark, "w").close()
            import torch
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 990.00 MiB (faked)")
        return _SoundFile(file, *args, **kwargs)

    soundfile.SoundFile = _open
"""


def test_failed_decoding_job_loses_only_its_sets(smoke, tmp_path):
    """A recording that cannot be decoded fails its job: the sets with a hypothesis for every
    utterance are still scored, the others are marked FAILED and named, and the run exits 1.
    A job that ran out of GPU memory (faked here: the first read of one recording raises
    torch.OutOfMemoryError) is decoded again alone, for its recordings without a hypothesis,
    and its set is scored."""
    work, exp, _ = smoke
    dump, expdir = tmp_path / "dump", tmp_path / "exp"
    shutil.copytree(work / "dumpdir", dump)
    shutil.copytree(exp, expdir / exp.name)
    shutil.copytree(work / "expdir" / "asr_stats_raw_en_char", expdir / "asr_stats_raw_en_char")
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not a wav file")
    scp = dump / "raw" / "test_long_40s" / "wav.scp"
    key = scp.read_text().split()[0]
    scp.write_text(f"{key} {bad}\n")
    oom_scp = dump / "raw" / "test_long_10s" / "wav.scp"
    oom_key, oom_wav = oom_scp.read_text().split("\n")[1].split()
    site = tmp_path / "fake_oom"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_OOM)
    env = dict(os.environ, FAKE_OOM_WAV=oom_wav, FAKE_OOM_MARK=str(tmp_path / "oom_raised"),
               PYTHONPATH=os.pathsep.join(
                   [str(site), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = ["bash", str(RECIPE / "run.sh"), "--smoke", "true", "--python", sys.executable,
           "--ngpu", "0", "--nj", "2", "--stage", "5", "--stop_stage", "6",
           "--decode_alone_seconds", "40",  # the broken 45 s recording: a job of its own
           "--decode_batch_size", "3",  # ESPnet's batched beam search; the second try: one at a time
           "--expdir", str(expdir), "--dumpdir", str(dump), "--datadir", str(work / "datadir")]
    proc = subprocess.run(cmd, cwd=work, env=env, check=False, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stderr[-4000:]
    decode = next((expdir / exp.name).glob("decode_*"))
    failed = sorted(d.name for d in decode.iterdir() if (d / "FAILED").exists())
    assert failed == ["test_long_40s"], failed
    assert "ERROR: test_long_40s: " in proc.stderr and "a decoding job failed" in proc.stderr
    # the out-of-memory job: raised once, decoded again alone, its set complete and scored
    assert (tmp_path / "oom_raised").exists()
    assert re.search(r"decode: job \d+ of all_test_sets ran out of GPU memory .*: its [1-9]\d* "
                     r"recordings without a hypothesis are decoded again, alone", proc.stderr), \
        proc.stderr[-4000:]
    logdir = decode / "all_test_sets" / "logdir"
    retried = list(logdir.glob("keys.*.retry"))
    assert len(retried) == 1 and oom_key in retried[0].read_text().split(), retried
    job = retried[0].name.split(".")[1]
    assert "--batch_size 3" in (logdir / f"asr_inference.{job}.log").read_text()
    assert "--batch_size 1" in (logdir / f"asr_inference.{job}.retry.log").read_text()
    hyp_keys = [line.split()[0] for line in (decode / "test_long_10s" / "text").read_text().splitlines()]
    assert oom_key in hyp_keys, hyp_keys
    scored = rows((expdir / exp.name / "RESULTS.md").read_text(), "WER")
    assert scored and not set(scored) & set(failed), (sorted(scored), failed)
    assert sorted([*scored, *failed]) == sorted(TEST_SETS)
    # scoring again on its own still ends with the error: the FAILED set is not forgotten
    cmd[cmd.index("--stage") + 1] = "6"
    proc = subprocess.run(cmd, cwd=work, env=env, check=False, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 1 and "ERROR: test_long_40s: " in proc.stderr, proc.stderr[-3000:]


def test_long_recordings_decode_in_jobs_of_their_own(tmp_path):
    """split_keys: the stage-5 job lists of about equal duration; a recording of at least
    decode_alone_seconds is a job by itself.  For decoding each list is a run of the recordings
    sorted by length, from its longest down (ESPnet batches the recordings in the order it reads
    them, so a batch holds recordings of about one length); otherwise the lists mix lengths
    (balanced more closely) in wav.scp's sorted order (ESPnet reads a key file and wav.scp in
    step)."""
    durs = {"a": 1200.0, "b": 8.0, "c": 30.0, "d": 10.0, "e": 20.0, "f": 12.0}
    (tmp_path / "wav.scp").write_text("".join(f"{k} /x/{k}.wav\n" for k in durs))
    (tmp_path / "utt2dur").write_text("".join(f"{k} {v}\n" for k, v in durs.items()))
    for order in ("longest_first", ""):
        script = (f'source "{REPO}/tools/asr_recipe.sh"; python="{sys.executable}"; '
                  f'split_keys "{tmp_path}" 2 "{tmp_path}/keys{order}" {order}')
        proc = subprocess.run(["bash", "-c", script], check=False, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == "3", (proc.stdout, proc.stderr)
        parts = [(tmp_path / f"keys{order}.{i}").read_text().split() for i in (1, 2, 3)]
        # the long recording's job: started first by decoding, last in the statistics' lists
        alone, parts = (parts[0], parts[1:]) if order else (parts[2], parts[:2])
        assert alone == ["a"], (order, alone, parts)
        assert sorted(parts[0] + parts[1]) == ["b", "c", "d", "e", "f"]
        imbalance = abs(sum(durs[k] for k in parts[0]) - sum(durs[k] for k in parts[1]))
        if order:  # runs by length, as even as whole recordings allow
            assert min(durs[k] for k in parts[0]) >= max(durs[k] for k in parts[1]), parts
            assert imbalance <= 30, parts
        else:
            assert imbalance <= 12, parts
        for part in parts:
            want = sorted(part, key=lambda k: -durs[k]) if order else sorted(part)
            assert part == want, (order, parts)

    # two long recordings, the shorter first in wav.scp: decoding starts the longer one first
    durs.update({"a0": 700.0})
    (tmp_path / "wav.scp").write_text("".join(f"{k} /x/{k}.wav\n" for k in sorted(durs)))
    (tmp_path / "utt2dur").write_text("".join(f"{k} {v}\n" for k, v in durs.items()))
    script = (f'source "{REPO}/tools/asr_recipe.sh"; python="{sys.executable}"; '
              f'split_keys "{tmp_path}" 2 "{tmp_path}/two" longest_first')
    proc = subprocess.run(["bash", "-c", script], check=False, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "4", (proc.stdout, proc.stderr)
    jobs = [(tmp_path / f"two.{i}").read_text().split() for i in (1, 2, 3, 4)]
    assert jobs[:2] == [["a"], ["a0"]], jobs


@pytest.mark.parametrize("longest,most,seconds,want", [
    (3.0, 8, 240, 8),      # short recordings: the whole batch
    (60.0, 8, 240, 4),     # 4 x 60 s
    (100.0, 8, 240, 2),    # 2 x 100 s
    (328.0, 8, 240, 1),    # longer than the bound: one at a time, never none
    (60.0, 1, 240, 1),     # decode_batch_size 1 stays 1
])
def test_job_batch_size_bounds_the_audio_of_a_batch(tmp_path, longest, most, seconds, want):
    """job_batch_size: decode_batch_size recordings a batch, fewer where that many of the job's
    longest recording would exceed decode_batch_seconds; only the job's own keys count."""
    (tmp_path / "utt2dur").write_text(f"x {longest}\ny 1.5\nother 9999\n")
    (tmp_path / "keys").write_text("x\ny\n")
    script = (f'source "{REPO}/tools/asr_recipe.sh"; decode_batch_size={most}; '
              f'decode_batch_seconds={seconds}; job_batch_size "{tmp_path}/keys" "{tmp_path}/utt2dur"; '
              f'job_batch_size "{tmp_path}/keys" "{tmp_path}/no_utt2dur"')
    proc = subprocess.run(["bash", "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(want), str(most)], proc.stdout


EPOCH_LOG = """\
[vm] 2026-12-07 13:09:00,001 (trainer:810) INFO: 1epoch:train:501-550batch: iter_time=8e-05, loss=90.1
[vm] 2026-12-07 13:09:12,002 (trainer:392) INFO: 1epoch results: [train] acc=0.444, loss=83.818, \
total_count=575, [valid] loss_ctc=61.629, cer_ctc=0.350
[vm] 2026-12-07 13:10:00,003 (trainer:810) INFO: 2epoch:train:1-50batch: iter_time=8e-05, loss=60.2
[vm] 2026-12-07 13:12:00,663 (trainer:810) INFO: 2epoch:train:501-550batch: iter_time=7.9e-05, loss=49.2
[vm] 2026-12-07 13:12:30,001 (trainer:392) INFO: 2epoch results: [train] acc=0.6, total_count=1150, \
[valid] cer_ctc=0.2
[vm] 2026-12-07 13:13:00,003 (trainer:810) INFO: 3epoch:train:1-50batch: iter_time=8e-05, loss=40.2
"""


@pytest.mark.parametrize("lines,elapsed,want", [
    (4, 200, "12"),    # at the last logged batch of the epoch before: its last 12 s (validation)
    (3, 200, "2012"),  # 50 of 550 in 200 s: 500 more take 2,000 s, then 12
    (6, 100, "1030"),  # epoch 3: 500 batches at 2 s, then epoch 2's last 30 s
    (2, 200, ""),      # no batch of the next epoch yet: nothing to tell
    (1, 200, ""),      # no completed epoch
])
def test_epoch_remaining_reads_the_epoch_in_progress(tmp_path, lines, elapsed, want):
    """local/epoch_remaining.sh: the seconds left in the epoch in progress, from the batches the
    last completed epoch logged, the rate of the epoch in progress, and the time from the last
    completed epoch's last batch line to its results (its last batches and validation)."""
    log = tmp_path / "train.log"
    log.write_text("".join(EPOCH_LOG.splitlines(keepends=True)[:lines]))
    proc = subprocess.run(["bash", str(RECIPE / "local" / "epoch_remaining.sh"), str(log), str(elapsed)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == want, (lines, proc.stdout)


STOP_HARNESS = r"""
set -euo pipefail
cd "$RECIPE"
log() { echo "LOG: $*"; }
kill() { echo "KILL $*"; }
start() { echo "START $*"; }
wait() { :; }
eval "$(sed -n '/^training_dir()/,/^}/p; /^stop_if_due()/,/^}/p; /^last_epoch()/,/^}/p' run_comparison.sh)"
declare -A pid=([m]=42) rc=() stopped=() finishing=() t_start=([m]=$((SECONDS - 310)))
logdir=$WORK; D=$WORK/exp
echo "=== stage 4: training $D (conf)" > "$logdir/m.log"
train_seconds=300; train_minutes=5
epoch_done() {  # epoch_done N AGO: epoch N's checkpoint.pth, Nepoch.pth and latest.pth written AGO s ago
    touch -d "-$2 seconds" "$D/checkpoint.pth" "$D/$1epoch.pth"
    ln -sfn "$1epoch.pth" "$D/latest.pth"; touch -h -d "-$2 seconds" "$D/latest.pth"
}
"""


def test_train_minutes_finishes_an_almost_done_epoch(tmp_path):
    """run_comparison.sh's stop_if_due past --train_minutes (300 s; 310 s gone): an epoch
    expected to end within a tenth of the limit is finished, the training is stopped once its
    files are written; a training whose epoch is far from its end is stopped at once, paused
    first (kill -STOP) and checked again.  A resumed training (its log starting at epoch 3) is
    stopped by its epoch numbers."""
    (tmp_path / "exp").mkdir()
    lines = EPOCH_LOG.splitlines(keepends=True)
    script = STOP_HARNESS + f"""
cp "{tmp_path}/log4" "$D/train.log"; epoch_done 1 200
echo "-- 1"; stop_if_due m; echo "-- 2"; stop_if_due m
cp "{tmp_path}/log5" "$D/train.log"; epoch_done 2 6
echo "-- 3"; stop_if_due m; echo "stopped=${{stopped[m]:-}}"
"""
    (tmp_path / "log4").write_text("".join(lines[:4]))
    (tmp_path / "log5").write_text("".join(lines[:5]))
    env = dict(os.environ, RECIPE=str(RECIPE), WORK=str(tmp_path))
    proc = subprocess.run(["bash", "-c", script], env=env, check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    first, rest = out.split("-- 1\n")[1].split("-- 2\n")
    second, third = rest.split("-- 3\n")
    assert "reached in epoch 2, expected to end in 12 s: stopped after it" in first, out
    assert "KILL" not in first and second == "", out  # waiting for epoch 2
    assert "training stopped after 2 epochs" in third and "KILL -STOP -- -42" in third, out
    assert "START m --max_epoch 2" in third and "stopped=2" in third, out

    # far from the epoch's end (50 of 550 batches): stopped at once after epoch 1
    script = STOP_HARNESS + f"""
cp "{tmp_path}/log3" "$D/train.log"; epoch_done 1 200
stop_if_due m; echo "stopped=${{stopped[m]:-}}"
"""
    (tmp_path / "log3").write_text("".join(lines[:3]))
    proc = subprocess.run(["bash", "-c", script], env=env, check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "stopped after 1 epochs" in proc.stdout, proc.stdout + proc.stderr
    assert "START m --max_epoch 1" in proc.stdout and "stopped=1" in proc.stdout, proc.stdout

    # a resumed training: its log holds epoch 3's results only, latest.pth is 3epoch.pth
    script = STOP_HARNESS + """
printf '3epoch results: [train] total_count=1725\n4epoch:train:1-50batch: x\n' > "$D/train.log"
epoch_done 3 200
stop_if_due m; echo "stopped=${stopped[m]:-}"
"""
    proc = subprocess.run(["bash", "-c", script], env=env, check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "stopped=3" in proc.stdout, proc.stdout + proc.stderr


def test_train_minutes_stops_epochs_of_seconds_between_checkpoints(tmp_path):
    """Epochs of a few seconds (the smoke corpus): a training whose last epoch's files are 2 s
    old is stopped, unless the next epoch's checkpoint.pth is being written (newer than the last
    epoch's model file), then it is continued and stopped at a later check."""
    (tmp_path / "exp").mkdir()
    script = STOP_HARNESS + """
printf '1epoch results: [train] total_count=5\n' > "$D/train.log"
epoch_done 1 2; touch "$D/checkpoint.pth"
stop_if_due m; echo "writing: stopped=${stopped[m]:-}"
epoch_done 1 2
stop_if_due m; echo "written: stopped=${stopped[m]:-}"
"""
    env = dict(os.environ, RECIPE=str(RECIPE), WORK=str(tmp_path))
    proc = subprocess.run(["bash", "-c", script], env=env, check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    writing, written = proc.stdout.split("writing: stopped=")
    assert "KILL -STOP -- -42" in writing and "KILL -CONT -- -42" in writing, proc.stdout
    assert written.startswith("\n") and "START" not in writing, proc.stdout
    assert "written: stopped=1" in written and "START m --max_epoch 1" in written, proc.stdout


def test_train_minutes_counts_from_each_configs_own_start(tmp_path):
    """The --train_minutes clock of a config starts when the config starts (after its
    --before_each wait, e.g. for a kernel build), not when the first config started: 310 s after
    the first config, a config started 100 s ago goes on training."""
    (tmp_path / "exp").mkdir()
    script = STOP_HARNESS + """
printf '1epoch results: [train] total_count=575\n2epoch:train:1-50batch: x\n' > "$D/train.log"
epoch_done 1 200
t_start[m]=$((SECONDS - 100)); stop_if_due m; echo "late start: stopped=${stopped[m]:-}"
t_start[m]=$((SECONDS - 310)); stop_if_due m; echo "early start: stopped=${stopped[m]:-}"
"""
    env = dict(os.environ, RECIPE=str(RECIPE), WORK=str(tmp_path))
    proc = subprocess.run(["bash", "-c", script], env=env, check=False, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "late start: stopped=\n" in proc.stdout, proc.stdout
    assert "early start: stopped=1" in proc.stdout and "START m --max_epoch 1" in proc.stdout, proc.stdout
