"""tools/join_utterances.py: a training set with long recordings made of its own utterances."""

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from join_utterances import main

SR = 16000


def data_dir(root: Path) -> Path:
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = [("a1", "sa", 1.0, "ONE"), ("a2", "sa", 2.0, "TWO THREE"), ("a3", "sa", 1.5, "FOUR"),
            ("b1", "sb", 0.5, "FIVE")]
    for utt, _, seconds, _ in rows:
        soundfile.write(src / f"{utt}.wav", 0.1 * rng.standard_normal(int(SR * seconds)), SR,
                        subtype="PCM_16")
    (src / "wav.scp").write_text("".join(f"{u} {src / u}.wav\n" for u, *_ in rows))
    (src / "text").write_text("".join(f"{u} {t}\n" for u, _, _, t in rows))
    (src / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s, _, _ in rows))
    (src / "utt2dur").write_text("".join(f"{u} {d:.3f}\n" for u, _, d, _ in rows))
    return src


def table(path: Path) -> dict:
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


@pytest.mark.parametrize("joined_only", [False, True])
def test_joined_recordings_hold_each_utterance_once_per_voice(tmp_path, joined_only):
    src = data_dir(tmp_path)
    dst = tmp_path / "dst"
    main(["--src", str(src), "--dst", str(dst), "--wav_dir", str(tmp_path / "wav"),
          "--seconds", "10", *(["--joined_only"] if joined_only else [])])
    text, wavs, durs = table(dst / "text"), table(dst / "wav.scp"), table(dst / "utt2dur")
    joined = sorted(u for u in text if "joined" in u)
    # one recording per voice (each has less than 10 s), its utterances in order
    assert [text[u] for u in joined] == ["ONE TWO THREE FOUR", "FIVE"]
    assert table(dst / "utt2spk")[joined[0]] == "sa"
    for u in joined:
        audio, rate = soundfile.read(wavs[u])
        assert rate == SR and float(durs[u]) == pytest.approx(len(audio) / SR, abs=1e-3)
    # speech plus one 0.2-0.6 s pause after each utterance
    assert 4.5 + 3 * 0.2 <= float(durs[joined[0]]) <= 4.5 + 3 * 0.6
    originals = sorted(set(text) - set(joined))
    assert originals == ([] if joined_only else ["a1", "a2", "a3", "b1"])
    assert set(wavs) == set(text) == set(durs) == set(table(dst / "utt2spk"))


def test_long_voices_are_cut_into_recordings_of_about_the_length(tmp_path):
    src = data_dir(tmp_path)
    dst = tmp_path / "dst"
    main(["--src", str(src), "--dst", str(dst), "--wav_dir", str(tmp_path / "wav"),
          "--seconds", "2", "--joined_only"])
    text = table(dst / "text")
    # voice sa: 4.5 s of speech + pauses in 2 or 3 recordings, in order; sb: one
    sa = [text[u] for u in sorted(text) if u.startswith("sa-")]
    assert 2 <= len(sa) <= 3 and " ".join(sa) == "ONE TWO THREE FOUR"


def test_missing_files_and_entries_are_named(tmp_path):
    src = data_dir(tmp_path)
    args = ["--src", str(src), "--dst", str(tmp_path / "dst"), "--wav_dir", str(tmp_path / "w")]
    with pytest.raises(SystemExit, match="--seconds must be > 0"):
        main([*args, "--seconds", "0"])
    (src / "utt2dur").write_text("a1 1.000\n")
    with pytest.raises(SystemExit, match=r"utt2dur: no entry for 3 utterances.*e\.g\. a2"):
        main([*args, "--seconds", "10"])
    (src / "utt2dur").unlink()
    with pytest.raises(SystemExit, match="utt2dur: missing"):
        main([*args, "--seconds", "10"])


def test_share_joins_part_of_each_voice_and_keeps_the_rest_once(tmp_path):
    """--share 0.5: round(0.5 x n) of each voice's utterances (at least one) are joined, the
    others kept as they are; every utterance's words are in the set exactly once, so the set
    holds the source's audio (plus the pauses of the joined recordings)."""
    src = data_dir(tmp_path)
    dst = tmp_path / "dst"
    main(["--src", str(src), "--dst", str(dst), "--wav_dir", str(tmp_path / "wav"),
          "--seconds", "10", "--share", "0.5"])
    text = table(dst / "text")
    joined = [u for u in text if "joined" in u]
    kept = sorted(set(text) - set(joined))
    # voice sa: 2 of its 3 utterances joined (round(1.5) = 2), sb: its only one
    assert len(joined) == 2 and len(kept) == 1 and kept[0] in ("a1", "a2", "a3"), text
    words = sorted(w for u in text for w in text[u].split())
    assert words == sorted("ONE TWO THREE FOUR FIVE".split())
    assert table(dst / "utt2spk")[kept[0]] == "sa"
    again = tmp_path / "again"
    main(["--src", str(src), "--dst", str(again), "--wav_dir", str(tmp_path / "wav2"),
          "--seconds", "10", "--share", "0.5"])
    assert table(again / "text") == text  # the same pick from the same seed


def test_share_is_checked(tmp_path):
    src = data_dir(tmp_path)
    args = ["--src", str(src), "--dst", str(tmp_path / "dst"), "--wav_dir", str(tmp_path / "w"),
            "--seconds", "10"]
    with pytest.raises(SystemExit, match=r"--share must be in \(0, 1\], got 0.0"):
        main([*args, "--share", "0"])
    with pytest.raises(SystemExit, match="cannot be combined with --joined_only"):
        main([*args, "--share", "0.5", "--joined_only"])
