"""The corpus generator of egs2/synth_speech/asr1 (local/make_corpus.py) at smoke size.

Runs the generator as the recipe does (a subprocess, real TTS engines and sox) on a corpus of
about a minute and checks: Kaldi data dirs that ESPnet reads (sorted, the same keys in every
file, spk2utt the inverse of utt2spk, utterance ids prefixed by the speaker, 16 kHz mono wavs
of the utt2dur lengths); train texts disjoint from the dev and test texts; the unseen voices and
the unseen engine absent from training; the same bytes for the same seed with another --nj;
a second run remakes only what is missing and refuses a wav dir planned with other options;
the long sets are test_long's utterances of one voice, joined in order.
The text normaliser is checked on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "egs2" / "synth_speech" / "asr1" / "local"
MAKE_CORPUS = LOCAL / "make_corpus.py"
SETS = ("train", "dev", "test", "test_unseen_voice", "test_unseen_engine", "test_long",
        "test_long_4s", "test_long_12s")
TEST_SETS = SETS[2:]
SMALL = ["--hours", "0.01", "--min_eval_utts", "6", "--seed", "7", "--long_durations", "4,12"]


def local_module(directory: Path, name: str):
    sys.path.insert(0, str(directory))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(directory))


def missing_tools():
    missing = local_module(REPO / "tools", "tts_corpus").missing_tools()
    if not Path("/usr/share/wordnet/data.noun").is_file():
        missing.append("wordnet-base")
    return missing


def make(work: Path, text_dir: Path, *extra: str, nj: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(MAKE_CORPUS), "--out_dir", str(work / "data"),
                           "--wav_dir", str(work / "wav"), "--text_dir", str(text_dir),
                           "--nj", str(nj), *SMALL, *extra],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    missing = missing_tools()
    assert not missing, (f"the synth_speech corpus needs {', '.join(missing)}: run 'bash "
                         "tools/install_recipe_deps.sh' from the repository root")
    root = tmp_path_factory.mktemp("synth_speech")
    text_dir = root / "text"
    proc = make(root / "a", text_dir)
    assert proc.returncode == 0, proc.stderr
    return root, text_dir


def read_map(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        rows.append((key, value))
    return rows


def set_texts(data: Path, name: str) -> set[str]:
    return {t for _, t in read_map(data / name / "text")}


def set_speakers(data: Path, name: str) -> set[str]:
    return {s for _, s in read_map(data / name / "utt2spk")}


def test_kaldi_dirs_are_valid(corpus):
    root, _ = corpus
    for name in SETS:
        d = root / "a" / "data" / name
        files = {f: read_map(d / f) for f in ("wav.scp", "text", "utt2spk", "utt2dur")}
        keys = [k for k, _ in files["wav.scp"]]
        assert keys, f"{d}/wav.scp is empty"
        assert keys == sorted(keys) and len(set(keys)) == len(keys), f"{d}/wav.scp order"
        for f, rows in files.items():
            assert [k for k, _ in rows] == keys, f"{d}/{f}: keys differ from wav.scp"
        assert all(t and t == t.lower() for _, t in files["text"]), f"{d}/text"
        utt2spk = dict(files["utt2spk"])
        assert all(u.startswith(s + "-") for u, s in utt2spk.items()), f"{d}: ids not by speaker"
        spk2utt = {s: us.split() for s, us in read_map(d / "spk2utt")}
        assert list(spk2utt) == sorted(spk2utt)
        assert {u: s for s, us in spk2utt.items() for u in us} == utt2spk, f"{d}/spk2utt"
        durs = {u: float(x) for u, x in files["utt2dur"]}
        for utt, path in files["wav.scp"]:
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), path
            assert abs(info.frames / 16000 - durs[utt]) < 1e-3, (utt, info.frames, durs[utt])
            assert 0.5 < durs[utt] < 30, (utt, durs[utt])


def test_train_texts_disjoint_from_test_texts(corpus):
    root, text_dir = corpus
    data = root / "a" / "data"
    train = set_texts(data, "train")
    for name in ("dev", *TEST_SETS):
        assert not train & set_texts(data, name), f"{name} shares sentences with train"
    lists = {s: set((text_dir / f"sentences_{s}.txt").read_text().splitlines())
             for s in ("train", "dev", "test")}
    assert not lists["train"] & lists["test"] and not lists["train"] & lists["dev"]
    assert not lists["dev"] & lists["test"]
    assert len({w for s in lists["train"] for w in s.split()}) > 5000  # a real vocabulary
    assert (text_dir / "LICENSE.WordNet").read_text().count("Princeton University") >= 1
    report = json.loads((data / "report.json").read_text())
    for name in TEST_SETS:
        oov = report["sets"][name]["oov_rate_text_lists"]
        assert 0 <= oov < 0.1, (name, oov)


def test_unseen_voices_and_engine_absent_from_training(corpus):
    root, _ = corpus
    data = root / "a" / "data"
    train = set_speakers(data, "train") | set_speakers(data, "dev") | set_speakers(data, "test")
    unseen_voice = set_speakers(data, "test_unseen_voice")
    assert unseen_voice and not unseen_voice & train
    assert not any("engbxgbcwmd" in s for s in train)  # the held-out accent
    engine = set_speakers(data, "test_unseen_engine")
    assert engine and all(s.startswith("pico_") for s in engine)
    assert not any(s.startswith("pico_") for s in train)
    assert {s.split("_")[0] for s in set_speakers(data, "train")} == {"espeak", "flite"}


def wav_bytes(work: Path) -> dict[str, bytes]:
    return {p.relative_to(work / "wav").as_posix(): p.read_bytes()
            for p in sorted((work / "wav").rglob("*.wav"))}


def test_same_seed_same_corpus_for_any_nj(corpus):
    root, text_dir = corpus
    proc = make(root / "b", text_dir, nj=1)
    assert proc.returncode == 0, proc.stderr
    a, b = wav_bytes(root / "a"), wav_bytes(root / "b")
    assert a.keys() == b.keys() and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []
    for name in SETS:
        for f in ("text", "utt2spk", "spk2utt", "utt2dur"):
            assert (root / "a" / "data" / name / f).read_text() == \
                (root / "b" / "data" / name / f).read_text(), f"{name}/{f}"


def test_resume_remakes_only_missing_wavs(corpus):
    root, text_dir = corpus
    work = root / "r"
    shutil.copytree(root / "a" / "wav", work / "wav")
    before = wav_bytes(root / "a")
    gone = sorted((work / "wav" / "train").glob("*.wav"))[:3] + \
        sorted((work / "wav" / "test_unseen_engine").glob("*.wav"))[:2]
    for p in gone:
        p.unlink()
    (work / "wav" / "train" / "left.wav.part").write_bytes(b"interrupted")
    proc = make(work, text_dir, nj=2)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((work / "data" / "report.json").read_text())
    gen = report["generation"]
    assert gen["utterances_made"] == len(gone)
    # the long sets' recordings are joined anew from the utterances, not synthesised
    n_utts = sum(r.get("utterances", 0) for r in report["sets"].values())
    assert n_utts == len(before) - sum(r.get("recordings", 0) for r in report["sets"].values())
    assert gen["utterances_skipped"] == n_utts - len(gone)
    assert wav_bytes(work) == before
    # the same wav dir with another seed would mix two corpora: refused
    proc = make(work, text_dir, "--seed", "8")
    assert proc.returncode != 0 and "other options" in proc.stderr, proc.stderr


def test_long_sets_are_test_long_joined_in_order(corpus):
    root, _ = corpus
    data = root / "a" / "data"
    short = dict(read_map(data / "test_long" / "text"))
    short_durs = {u: float(d) for u, d in read_map(data / "test_long" / "utt2dur")}
    voice = set_speakers(data, "test_long")
    assert len(voice) == 1 and not voice & set_speakers(data, "test_unseen_voice")
    assert voice <= {v["id"] for v in local_module(LOCAL, "make_corpus").voice_sets("pico")["train"]}
    report = json.loads((data / "report.json").read_text())
    for target in (4, 12):
        name = f"test_long_{target}s"
        text = dict(read_map(data / name / "text"))
        assert " ".join(text[u] for u in sorted(text)) == " ".join(short[u] for u in sorted(short))
        assert set_speakers(data, name) == voice
        durs = [float(d) for _, d in read_map(data / name / "utt2dur")]
        pauses = sum(durs) - sum(short_durs.values())  # 0.2-0.6 s after every utterance
        assert 0.2 * len(short) - 1e-3 <= pauses <= 0.6 * len(short) + 1e-3, (name, pauses)
        assert 0.5 * target < sum(durs) / len(durs) < 1.6 * target, (name, durs)
        assert report["sets"][name]["recordings"] == len(durs)
    # the longest set: all of the voice's utterances in one recording
    assert len(read_map(data / "test_long_12s" / "text")) == 1


def test_cut_points_balance_consecutive_groups():
    tc = local_module(REPO / "tools", "tts_corpus")
    assert tc.cut_points([1.0] * 10, 3) == [0, 3, 7]
    assert tc.cut_points([1.0] * 4, 4) == [0, 1, 2, 3]
    assert tc.cut_points([5.0, 1.0, 1.0, 1.0], 2) == [0, 1]
    assert tc.cut_points([1.0, 1.0, 1.0, 9.0], 2) == [0, 3]
    assert tc.cut_points([2.0], 1) == [0]


def test_normalise_spells_numbers_and_drops_unreadable():
    wt = local_module(LOCAL, "wordnet_text")
    assert wt.normalise("In 1990, 2,500 men fought (bloody) battles!") == \
        "in nineteen ninety two thousand five hundred men fought battles".split()
    assert wt.normalise("a `well-known' fact") == ["a", "well", "known", "fact"]
    assert wt.spell(1_000_017) == "one million seventeen"
    assert wt.spell_number("2005") == "two thousand five"
    assert wt.spell_number("1905") == "nineteen oh five"
    for bad in ("it costs 3.50 dollars", "the 3rd man", "at 10:30 sharp", "café au lait"):
        assert wt.normalise(bad) is None, bad
    assert wt.oov_rate(["a b", "c d"], {"a", "b", "c"}) == 0.25
