"""The benchmarks of trained models on recipe data, in fresh processes, on tiny untrained models
and three short utterances: long_recording_trained_cpu.py (the joined recording repeats the
utterances in order until it is long enough, its reference is their texts in the same order,
and the report's counts follow from them) and streaming_partials_cpu.py."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from long_recording_cpu import TINY_CONF, TINY_DECODER_CONF, build_model_files
from long_recording_trained_cpu import join_recordings, word_errors

TEXTS = {"a": "one two", "b": "three", "c": "four five six"}


def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    for utt, seconds in (("a", 0.5), ("b", 0.25), ("c", 1.0)):
        soundfile.write(d / f"{utt}.wav", 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
    (d / "wav.scp").write_text("".join(f"{u} {d / u}.wav\n" for u in TEXTS))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, t in TEXTS.items()))
    return d


def test_joined_recording_and_its_reference(tmp_path):
    speech, words, used = join_recordings([data_dir(tmp_path)], minutes=3.0 / 60)
    # 0.5 + 0.3, 0.25 + 0.3, 1.0 + 0.3 s = 2.65 s; then "a" again: 3.45 s >= 3 s
    assert used == 4 and len(speech) == int(16000 * 3.45)
    assert words == ["one", "two", "three", "four", "five", "six", "one", "two"]
    assert word_errors(words, words[:-1]) == 1


def test_report_of_a_decode(tmp_path):
    d = data_dir(tmp_path)
    config, model, _ = build_model_files(tmp_path / "model", encoder_conf=TINY_CONF,
                                         decoder_conf=TINY_DECODER_CONF)
    (tmp_path / "decode.yaml").write_text("beam_size: 2\nctc_weight: 0.3\nmaxlenratio: 0.2\n")
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "long_recording_trained_cpu.py"),
         "--asr_train_config", str(config), "--asr_model_file", str(model),
         "--decode_config", str(tmp_path / "decode.yaml"), "--data", str(d),
         "--minutes", "0.1", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["decode_options"] == {"beam_size": 2, "ctc_weight": 0.3, "maxlenratio": 0.2}
    # 6 s: the three utterances twice (5.3 s), then "a" (6.1 s)
    assert row["utterances_joined"] == 7 and row["audio_seconds"] == 6.1
    assert row["ref_words"] == 14 and row["encoder_frames"] > 0
    assert row["wall_seconds"] >= row["encoder_seconds"] >= 0 and row["wall_seconds"] > 0
    assert 0 <= row["wer"] <= 100 * max(row["hyp_words"], row["ref_words"]) / row["ref_words"]
    assert row["peak_rss_mib"] >= row["rss_before_decode_mib"] > 0


def test_streaming_partials_report(tmp_path):
    """benchmarks/streaming_partials_cpu.py: each search's WER, CER and time per audio second;
    the best path's WER is the one computed here from the same model's CTC argmax."""
    d = data_dir(tmp_path)
    config, model, _ = build_model_files(
        tmp_path / "model", encoder_conf=dict(TINY_CONF, bidirectional=False),
        decoder_conf=TINY_DECODER_CONF)
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "streaming_partials_cpu.py"),
         "--asr_train_config", str(config), "--asr_model_file", str(model), "--data", str(d),
         "--beams", "1", "3", "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["recordings"] == 3 and row["audio_seconds"] == 1.8
    for name in ("best_path", "prefix_beam1", "prefix_beam3"):
        assert row[name]["ms_per_audio_second"] >= 0, row
    # the best path's errors, counted here
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    s2t = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu")
    m = s2t.asr_model
    errors = words = 0
    for utt, ref in TEXTS.items():
        speech, _ = soundfile.read(d / f"{utt}.wav", dtype="float32")
        with torch.no_grad():
            enc, _ = m.encode(torch.from_numpy(speech)[None], torch.tensor([len(speech)]))
        labels = m.ctc.argmax(enc)[0].tolist()
        ids = [label for label, _ in itertools.groupby(labels) if label != m.blank_id]
        tokens = s2t.converter.ids2tokens(ids)
        hyp = s2t.tokenizer.tokens2text(tokens)
        errors, words = errors + word_errors(ref.split(), hyp.split()), words + len(ref.split())
    assert errors and row["best_path"]["wer"] == round(100 * errors / words, 1), row


def test_best_path_collapses_repeats_and_drops_blanks():
    import torch
    from streaming_partials_cpu import best_path

    labels = [0, 3, 3, 0, 3, 5, 5, 0]
    log_probs = torch.full((len(labels), 6), -5.0)
    log_probs[range(len(labels)), labels] = 0.0
    assert best_path(log_probs, blank=0) == [3, 3, 5]
    assert best_path(log_probs, blank=3) == [0, 0, 5, 0]


def test_an_utterance_without_text_is_named(tmp_path):
    import pytest

    d = data_dir(tmp_path)
    (d / "text").write_text("a one two\n")
    with pytest.raises(SystemExit, match=r"text: no text for 2 utterances of wav\.scp, e\.g\. b"):
        join_recordings([d], minutes=0.1)
