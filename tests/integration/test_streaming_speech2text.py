"""Speech2TextStreaming on a tiny causal samba_asr model trained by ESPnet's asr_train (in this
process, 20 CPU epochs of 4 utterances): audio fed in chunks gives, at is_final, the hypotheses of ESPnet's
offline Speech2Text on the whole audio (attention decoder + CTC beam search), and before it
partial results: by default the best prefix of a CTC prefix beam search, the same as that
search over the offline encoder's frames; with partial_search="ctc_best_path" the CTC best path,
growing as audio arrives and ending in the offline encoder's best path.  A bidirectional model is refused by name.  With endpointing, two
utterances joined by a silence give two finished utterances, each the offline decode of its
samples (also through the command line and the stream_wav demo), and max_utterance_seconds
bounds the encoder frames kept."""

from itertools import groupby, pairwise

import numpy as np
import pytest
import soundfile
import torch
import yaml
from cli_data import train_args, write_dataset
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.bin.asr_inference import Speech2Text
from espnet2.tasks.asr import ASRTask

from espnet_mamba.encoders.samba_asr import SambaASREncoder
from espnet_mamba.integration.streaming_ctc_search import StreamingCTCPrefixSearch
from espnet_mamba.integration.streaming_inference import Speech2TextStreaming

FRONTEND = {"n_fft": 512, "hop_length": 160, "n_mels": 40}
DECODE = {"beam_size": 3, "ctc_weight": 0.3, "lm_weight": 0.0, "nbest": 2}
CHUNK = 5120  # 320 ms at 16 kHz
# in-test training on a shared 2-core machine: one torch thread (conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def feats_stats(ds, path):
    """global_mvn statistics of the training audio (what collect_stats would write)."""
    frontend = DefaultFrontend(**FRONTEND).eval()
    count, total, square = 0, 0.0, 0.0
    for line in ds.wav_scp("valid").read_text().splitlines():
        wav, _ = soundfile.read(line.split(maxsplit=1)[1], dtype="float32")
        with torch.no_grad():
            feats, _ = frontend(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        feats = feats[0].double().numpy()
        count, total, square = count + len(feats), total + feats.sum(0), square + (
            feats ** 2).sum(0)
    np.savez(path, count=np.array(count), sum=total, sum_square=square)


def train(tmp_path, epochs=20):
    ds = write_dataset(tmp_path / "data", repeat=1)
    shapes = {}
    for split in ("train", "valid"):
        keys = [line.split()[0] for line in ds.wav_scp(split).read_text().splitlines()]
        shapes[split] = tmp_path / f"{split}_shape"
        shapes[split].write_text("".join(f"{k} 16000\n" for k in keys))
    feats_stats(ds, tmp_path / "feats_stats.npz")
    tiny = {"d_state": 8, "dropout_rate": 0.0}
    config = {
        "encoder": "samba_asr", "decoder": "samba_asr",
        "encoder_conf": {"output_size": 32, "num_blocks": 2, "bidirectional": False, **tiny},
        "decoder_conf": {"num_blocks": 1, **tiny},
        "frontend": "default", "frontend_conf": FRONTEND,
        "normalize": "global_mvn",
        "normalize_conf": {"stats_file": str(tmp_path / "feats_stats.npz")},
        "model_conf": {"ctc_weight": 0.7, "lsm_weight": 0.0},
        "optim": "adam", "optim_conf": {"lr": 0.005}, "max_epoch": epochs,
        "batch_type": "unsorted", "batch_size": 4, "keep_nbest_models": 1,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "exp"
    ASRTask.main(cmd=[str(a) for a in (
        "--config", tmp_path / "train.yaml", *train_args(ds),
        "--train_shape_file", shapes["train"], "--valid_shape_file", shapes["valid"],
        "--output_dir", out)])
    return ds, out / "config.yaml", out / f"{epochs}epoch.pth"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    return train(tmp_path_factory.mktemp("stream"))


def audio(ds):
    wavs = {}
    for line in ds.wav_scp("test").read_text().splitlines():
        utt, path = line.split(maxsplit=1)
        wavs[utt] = soundfile.read(path, dtype="float32")[0]
    return wavs


def stream(s2t, wav, sizes):
    results, start, k = [], 0, 0
    while start < len(wav):
        size = sizes[k % len(sizes)]
        chunk = wav[start:start + size]
        start, k = start + size, k + 1
        results.append(s2t(chunk, is_final=start >= len(wav)))
    return results


def summary(results):
    return [(text, tokens, token_int, round(float(hyp.score), 4))
            for text, tokens, token_int, hyp in results]


@pytest.mark.parametrize("sizes", [[CHUNK], [777, 4096, 3]], ids=["320ms", "uneven"])
def test_final_hypotheses_equal_offline_speech2text(trained, sizes):
    ds, config, model = trained
    offline = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu", **DECODE)
    online = Speech2TextStreaming(asr_train_config=config, asr_model_file=model, device="cpu",
                                  **DECODE)
    texts = []
    for utt, wav in sorted(audio(ds).items()):
        want = offline(wav)
        results = stream(online, wav, sizes)
        got = results[-1]
        assert len(got) == len(want) == DECODE["nbest"]
        assert summary(got) == summary(want), utt
        texts.append((ds.utts[utt], got[0][0]))
    # the model has learnt something: the hypotheses are not all empty
    assert any(hyp for _, hyp in texts), texts


def test_partial_results_are_the_ctc_best_path_so_far(trained):
    ds, config, model = trained
    online = Speech2TextStreaming(asr_train_config=config, asr_model_file=model, device="cpu",
                                  partial_search="ctc_best_path", **DECODE)
    m = online.asr_model
    seen = []
    for utt, wav in sorted(audio(ds).items()):
        partials = stream(online, wav[:len(wav) - len(wav) % CHUNK], [CHUNK])[:-1]
        # before is_final: one partial hypothesis per chunk, each extending the previous one
        assert all(len(r) == 1 for r in partials)
        ids = [r[0][2] for r in partials]
        assert all(a == b[:len(a)] for a, b in pairwise(ids)), ids
        seen += ids
        # the last partial: the CTC best path of the offline encoder's frames so far
        _, tokens, token_int, hyp = stream(online, wav, [CHUNK])[-2][0]
        with torch.no_grad():
            enc, _ = m.encode(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        labels = m.ctc.argmax(enc[:, :hyp_frames(online, wav)])[0].tolist()
        best = [lab for lab, _ in groupby(labels) if lab != m.blank_id]
        assert token_int == best, utt
        assert tokens == online.speech2text.converter.ids2tokens(best)
        assert hyp.yseq.tolist() == [m.sos, *best]
    assert any(seen), "every partial result was empty: the test model has not learnt CTC"


def test_partial_results_are_the_ctc_prefix_search_over_the_offline_frames(trained):
    ds, config, model = trained
    online = Speech2TextStreaming(asr_train_config=config, asr_model_file=model, device="cpu",
                                  partial_beam_size=4, **DECODE)
    m = online.asr_model
    seen = []
    for utt, wav in sorted(audio(ds).items()):
        results = stream(online, wav, [777, 4096, 3])
        partials = [r[0] for r in results[:-1]]
        seen += [token_int for _, _, token_int, _ in partials]
        # after every chunk: the search over the offline encoder's frames so far
        with torch.no_grad():
            enc, _ = m.encode(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
            logp = m.ctc.log_softmax(enc)[0]
        frames = streamed_frames(online, wav, [777, 4096, 3])
        for (_, tokens, token_int, hyp), n in zip(partials, frames):
            search = StreamingCTCPrefixSearch(beam=4, blank=m.blank_id)
            search.extend(logp[:n])
            want, score = search.best()
            assert token_int == want, (utt, n)
            assert tokens == online.speech2text.converter.ids2tokens(want)
            assert hyp.yseq.tolist() == [m.sos, *want]
            assert float(hyp.score) == pytest.approx(score, abs=1e-3)
    assert any(seen), "every partial result was empty: the test model has not learnt CTC"


def test_partial_search_options_are_checked(trained):
    _, config, model = trained
    with pytest.raises(ValueError, match="partial_search must be one of ctc_prefix, "
                                         "ctc_best_path, got 'attention'"):
        Speech2TextStreaming(asr_train_config=config, asr_model_file=model,
                             partial_search="attention")
    with pytest.raises(ValueError, match="partial_beam_size must be >= 1, got 0"):
        Speech2TextStreaming(asr_train_config=config, asr_model_file=model,
                             partial_beam_size=0)
    # the default: the beam size, at most 10
    for beam, want in ((3, 3), (20, 10)):
        s2t = Speech2TextStreaming(asr_train_config=config, asr_model_file=model, beam_size=beam)
        assert s2t.prefix_search.beam == want
    s2t = Speech2TextStreaming(asr_train_config=config, asr_model_file=model,
                               partial_search="ctc_best_path")
    assert s2t.prefix_search is None


def streamed_frames(online, wav, sizes):
    """Encoder frames out after each chunk but the last, counted from the start."""
    online.reset()
    counts, out, start, k = [], 0, 0, 0
    while start + sizes[k % len(sizes)] < len(wav):
        size = sizes[k % len(sizes)]
        out += len(online.encoder(online.frontend(wav[start:start + size])))
        counts.append(out)
        start, k = start + size, k + 1
    online.reset()
    return counts


def hyp_frames(online, wav):
    """Encoder frames out after all chunks but the last (n x CHUNK samples)."""
    online.reset()
    out = 0
    full = len(wav) // CHUNK * CHUNK if len(wav) % CHUNK else len(wav) - CHUNK
    for start in range(0, full, CHUNK):
        out += len(online.encoder(online.frontend(wav[start:start + CHUNK])))
    online.reset()
    return out


def test_chunk_processing_time_is_reported(trained):
    ds, config, model = trained
    online = Speech2TextStreaming(asr_train_config=config, asr_model_file=model, **DECODE)
    wav = next(iter(audio(ds).values()))
    online(wav[:CHUNK], is_final=False)
    assert online.last_chunk_seconds > 0


def test_bidirectional_model_is_refused(trained):
    _, config, model = trained
    offline = Speech2Text(asr_train_config=config, asr_model_file=model)
    m = offline.asr_model
    m.encoder = SambaASREncoder(m.encoder.embed.input_size, output_size=32, num_blocks=1,
                                d_state=8).eval()  # bidirectional by default
    with pytest.raises(ValueError, match="encoder_conf.bidirectional: true"):
        Speech2TextStreaming(speech2text=offline)


def test_batch_size_other_than_one_is_refused(trained):
    _, config, model = trained
    with pytest.raises(ValueError, match="batch_size must be 1, got 2"):
        Speech2TextStreaming(asr_train_config=config, asr_model_file=model, batch_size=2)


@pytest.mark.parametrize("chunk", [CHUNK, 0])
def test_command_line_writes_the_offline_hypotheses(trained, tmp_path, chunk):
    """ESPnet's asr_inference_streaming options and output files, through our class."""
    from espnet_mamba.integration.streaming_asr_inference import main

    ds, config, model = trained
    out = tmp_path / "decode"
    main(["--asr_train_config", str(config), "--asr_model_file", str(model),
          "--data_path_and_name_and_type", f"{ds.wav_scp('test')},speech,sound",
          "--sim_chunk_length", str(chunk), "--output_dir", str(out), "--num_workers", "0",
          "--beam_size", "3", "--ctc_weight", "0.3", "--lm_weight", "0.0", "--nbest", "2"])
    offline = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu", **DECODE)
    for n in (1, 2):
        text = dict(line.split(maxsplit=1) if " " in line else (line, "")
                    for line in (out / f"{n}best_recog/text").read_text().splitlines())
        ids = dict(line.split(maxsplit=1) if " " in line else (line, "")
                   for line in (out / f"{n}best_recog/token_int").read_text().splitlines())
        for utt, wav in audio(ds).items():
            want = offline(wav)[n - 1]
            assert text[utt] == want[0] and ids[utt].split() == list(map(str, want[2])), utt
    rtf = dict(line.split() for line in (out / "streaming/rtf").read_text().splitlines())
    assert set(rtf) == set(ds.utts) and all(float(v) > 0 for v in rtf.values())
    # partial_recog: the CTC prefix search (beam 3) over all the offline encoder's frames
    partial = dict(line.split(maxsplit=1) if " " in line else (line, "")
                   for line in (out / "partial_recog/token_int").read_text().splitlines())
    m = offline.asr_model
    for utt, wav in audio(ds).items():
        with torch.no_grad():
            enc, _ = m.encode(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        search = StreamingCTCPrefixSearch(beam=3, blank=m.blank_id)
        search.extend(m.ctc.log_softmax(enc)[0])
        assert partial[utt].split() == list(map(str, search.best()[0])), utt


def test_command_line_refuses_block_search_options(trained, tmp_path):
    from espnet_mamba.integration.streaming_asr_inference import main

    ds, config, model = trained
    with pytest.raises(ValueError, match="encoded_feat_length_limit"):
        main(["--asr_train_config", str(config), "--asr_model_file", str(model),
              "--data_path_and_name_and_type", f"{ds.wav_scp('test')},speech,sound",
              "--output_dir", str(tmp_path), "--encoded_feat_length_limit", "5"])


def joined(ds, silence_seconds=1.0):
    """Two test utterances with a silence (low noise, as the synthetic audio's) between."""
    wavs = audio(ds)
    first, second = sorted(wavs)[:2]
    gap = 0.003 * np.random.default_rng(1).standard_normal(int(silence_seconds * 16000))
    return wavs[first], wavs[second], np.concatenate(
        [wavs[first], gap.astype(np.float32), wavs[second]])


def test_endpointing_splits_two_utterances_into_their_offline_decodes(trained):
    """A silence ends the first utterance: two final results, each the offline decode of its
    samples (the stream restarts from a fresh state at the endpoint)."""
    ds, config, model = trained
    offline = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu", **DECODE)
    online = Speech2TextStreaming(asr_train_config=config, asr_model_file=model, device="cpu",
                                  endpoint_blank_seconds=0.4, **DECODE)
    wav1, wav2, wav = joined(ds)
    finished, last, start = [], None, 0
    for begin in range(0, len(wav), CHUNK):
        is_final = begin + CHUNK >= len(wav)
        start = online.start
        out = online(wav[begin:begin + CHUNK], is_final=is_final)
        finished += online.finished
        if online.finished:  # the new utterance has no token yet
            assert out[0][2] == []
        if is_final:
            last = out
    assert len(finished) == 1, [(f.start, f.end) for f in finished]
    cut = finished[0]
    assert cut.start == 0 and len(wav1) < cut.end < len(wav) - len(wav2)  # in the silence
    assert summary(cut.results) == summary(offline(wav[:cut.end]))
    assert start >= cut.end
    assert summary(last) == summary(offline(wav[start:]))
    # and they are the two utterances' own hypotheses
    assert cut.results[0][0] == offline(wav1)[0][0] and cut.results[0][0]
    assert last[0][0] == offline(wav2)[0][0] and last[0][0]
    assert online.start == 0 and online.frames == []  # is_final: the next stream starts afresh


def test_max_utterance_seconds_bounds_the_frames_kept(trained):
    ds, config, model = trained
    offline = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu", **DECODE)
    online = Speech2TextStreaming(asr_train_config=config, asr_model_file=model, device="cpu",
                                  max_utterance_seconds=0.6, **DECODE)
    _, _, wav = joined(ds)
    finished, kept = [], []
    for begin in range(0, len(wav), CHUNK):
        online(wav[begin:begin + CHUNK], is_final=begin + CHUNK >= len(wav))
        finished += online.finished
        kept.append(sum(len(f) for f in online.frames))
    # at most the bound plus one chunk's frames (8 of 40 ms) are ever held
    assert max(kept[:-1]) < 0.6 / 0.04 + CHUNK // 640 + 1, kept
    assert len(finished) >= 3
    assert [f.start for f in finished[1:]] == [f.end for f in finished[:-1]]
    for f in finished:
        assert summary(f.results) == summary(offline(wav[f.start:f.end])), (f.start, f.end)


def test_endpoint_options_are_checked(trained):
    _, config, model = trained
    with pytest.raises(ValueError, match="endpoint_blank_seconds must be > 0 seconds.*got 0"):
        Speech2TextStreaming(asr_train_config=config, asr_model_file=model,
                             endpoint_blank_seconds=0)
    with pytest.raises(ValueError, match="max_utterance_seconds must be > 0 seconds.*got -1"):
        Speech2TextStreaming(asr_train_config=config, asr_model_file=model,
                             max_utterance_seconds=-1)


def test_stream_wav_demo_prints_partials_and_the_two_finals(trained, tmp_path):
    import io

    from espnet_mamba.integration.stream_wav import main

    ds, config, model = trained
    offline = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu", **DECODE)
    wav1, wav2, wav = joined(ds)
    path = tmp_path / "two.wav"
    soundfile.write(str(path), wav, 16000, subtype="FLOAT")
    out = io.StringIO()
    finals = main([str(path), "--asr_train_config", str(config), "--asr_model_file",
                   str(model), "--endpoint_blank_seconds", "0.4", "--beam_size", "3",
                   "--ctc_weight", "0.3"], out=out)
    lines = out.getvalue().splitlines()
    assert [text for _, _, text in finals] == [offline(wav1)[0][0], offline(wav2)[0][0]]
    assert finals[0][0] == 0 and finals[0][1] <= finals[1][0] and finals[1][1] == len(wav) / 16000
    assert [line for line in lines if line.startswith("final")] == [
        f"final {a:.2f}-{b:.2f} s: {t}" for a, b, t in finals]
    partials = [line for line in lines if line.startswith("partial")]
    assert partials and all(a != b for a, b in pairwise(partials)), lines
    # partial hypotheses of each utterance before its final line; the second starts afresh
    first = lines.index(f"final {finals[0][0]:.2f}-{finals[0][1]:.2f} s: {finals[0][2]}")
    assert lines[0].startswith("partial") and lines[first + 1].startswith("partial"), lines
    assert not lines[first + 1].endswith(lines[first - 1].split(": ", 1)[1]), lines


def test_stream_wav_demo_names_a_wrong_sample_rate(trained, tmp_path):
    from espnet_mamba.integration.stream_wav import main

    _, config, model = trained
    path = tmp_path / "8k.wav"
    soundfile.write(str(path), np.zeros(8000, dtype=np.float32), 8000)
    with pytest.raises(ValueError, match="8k.wav: sample rate 8000 Hz, the model takes 16000"):
        main([str(path), "--asr_train_config", str(config), "--asr_model_file", str(model)])


def test_command_line_endpointing_joins_the_utterances_of_a_recording(trained, tmp_path):
    from espnet_mamba.integration.streaming_asr_inference import main

    ds, config, model = trained
    offline = Speech2Text(asr_train_config=config, asr_model_file=model, device="cpu", **DECODE)
    wav1, wav2, wav = joined(ds)
    soundfile.write(str(tmp_path / "two.wav"), wav, 16000, subtype="FLOAT")
    (tmp_path / "wav.scp").write_text(f"two {tmp_path / 'two.wav'}\n")
    out = tmp_path / "decode"
    main(["--asr_train_config", str(config), "--asr_model_file", str(model),
          "--data_path_and_name_and_type", f"{tmp_path / 'wav.scp'},speech,sound",
          "--sim_chunk_length", str(CHUNK), "--output_dir", str(out), "--num_workers", "0",
          "--beam_size", "3", "--ctc_weight", "0.3", "--lm_weight", "0.0",
          "--endpoint_blank_seconds", "0.4"])
    first, second = offline(wav1)[0], offline(wav2)[0]
    assert (out / "1best_recog/text").read_text() == f"two {first[0]} {second[0]}\n"
    assert (out / "1best_recog/token_int").read_text().split()[1:] == list(
        map(str, first[2] + second[2]))
    ranges = (out / "streaming/utterances").read_text().split()[1:]
    assert len(ranges) == 2 and ranges[0].startswith("0.00-")
    assert ranges[1].endswith(f"-{len(wav) / 16000:.2f}")
