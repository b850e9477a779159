"""Demo: stream a WAV file through a causal samba_asr model, printing hypotheses as they change.

    python -m espnet_mamba.integration.stream_wav --asr_train_config exp/asr/config.yaml \\
        --asr_model_file exp/asr/valid.acc.ave.pth recording.wav --realtime \\
        --endpoint_blank_seconds 0.8

The file is read block by block (``--chunk_ms`` of audio each, never whole) and fed to
:class:`~espnet_mamba.integration.streaming_inference.Speech2TextStreaming`, as fast as
possible or, with ``--realtime``, at the pace of the audio (as from a microphone).  Each time
the partial hypothesis (``--partial_search``) changes, a line ``partial <seconds>: <text>`` is printed;
each finished utterance (by endpointing, and the last one at the end of the file) prints
``final <start>-<end> s: <text>``.  The audio seconds are those of the file.
"""

from __future__ import annotations

import argparse
import sys
import time

import soundfile
import torch

from espnet_mamba.integration.streaming_inference import Speech2TextStreaming


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("wav", help="a mono WAV (or any file soundfile reads) at the model's rate")
    p.add_argument("--asr_train_config", required=True)
    p.add_argument("--asr_model_file", required=True)
    p.add_argument("--chunk_ms", type=float, default=320.0, help="audio per chunk")
    p.add_argument("--realtime", action="store_true",
                   help="feed the chunks at the pace of the audio instead of as fast as possible")
    p.add_argument("--endpoint_blank_seconds", type=float, default=None,
                   help="end an utterance after this long of CTC blanks after speech")
    p.add_argument("--max_utterance_seconds", type=float, default=None,
                   help="end an utterance after this long")
    p.add_argument("--partial_search", default="ctc_prefix",
                   choices=["ctc_prefix", "ctc_best_path"],
                   help="partial results: CTC prefix beam search or the CTC best path")
    p.add_argument("--partial_beam_size", type=int, default=None,
                   help="prefixes the partial search keeps (default: --beam_size, at most 10)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--beam_size", type=int, default=10)
    p.add_argument("--ctc_weight", type=float, default=0.3)
    p.add_argument("--lm_weight", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's)")
    return p


def _text(result) -> str:
    text, tokens = result[0], result[1]
    return text if text is not None else " ".join(tokens)


def stream_file(s2t: Speech2TextStreaming, path, chunk_ms: float = 320.0,
                realtime: bool = False, out=sys.stdout) -> list:
    """Stream ``path`` through ``s2t``; print partial and final hypotheses to ``out``.

    Returns the finals, [(start_seconds, end_seconds, text), ...]."""
    rate = s2t.asr_model.frontend.logmel.mel_options["sr"]
    info = soundfile.info(str(path))
    if info.samplerate != rate:
        raise ValueError(f"{path}: sample rate {info.samplerate} Hz, the model takes {rate} Hz "
                         "(resample the file first)")
    if info.channels != 1:
        raise ValueError(f"{path}: {info.channels} channels; streaming takes mono audio "
                         "(1 channel)")
    block = max(1, round(chunk_ms * rate / 1000))
    finals, partial, position = [], None, 0
    s2t.reset()
    began = time.perf_counter()
    blocks = soundfile.blocks(str(path), blocksize=block, dtype="float32")
    chunk = next(blocks, None)
    if chunk is None:
        raise ValueError(f"{path}: no audio samples")
    while chunk is not None:
        following = next(blocks, None)  # one block ahead: is this chunk the last one?
        is_final = following is None
        if realtime:  # wait until the chunk would have been recorded
            time.sleep(max(0.0, (position + len(chunk)) / rate - (time.perf_counter() - began)))
        start = s2t.start  # the current utterance's first sample (before the call resets it)
        results = s2t(chunk, is_final=is_final)
        position += len(chunk)
        for done in s2t.finished:
            text = _text(done.results[0]) if done.results else ""
            finals.append((done.start / rate, done.end / rate, text))
            print(f"final {done.start / rate:.2f}-{done.end / rate:.2f} s: {text}", file=out,
                  flush=True)
            partial = None
        if is_final:
            if results:
                finals.append((start / rate, position / rate, _text(results[0])))
                print(f"final {start / rate:.2f}-{position / rate:.2f} s: {finals[-1][2]}",
                      file=out, flush=True)
        elif results[0][2] != partial and (results[0][2] or partial):
            partial = results[0][2]
            print(f"partial {position / rate:.2f}: {_text(results[0])}", file=out, flush=True)
        chunk = following
    return finals


def main(cmd=None, out=sys.stdout) -> list:
    args = get_parser().parse_args(cmd)
    if args.threads:
        torch.set_num_threads(args.threads)
    s2t = Speech2TextStreaming(
        asr_train_config=args.asr_train_config, asr_model_file=args.asr_model_file,
        device=args.device, beam_size=args.beam_size, ctc_weight=args.ctc_weight,
        lm_weight=args.lm_weight, endpoint_blank_seconds=args.endpoint_blank_seconds,
        max_utterance_seconds=args.max_utterance_seconds, partial_search=args.partial_search,
        partial_beam_size=args.partial_beam_size)
    return stream_file(s2t, args.wav, args.chunk_ms, args.realtime, out)


if __name__ == "__main__":
    main()
