"""WER and cost of streaming partial results (CTC alone) at several prefix-search beams, on a CPU.

For each recording of the data directories, the trained causal model's encoder output over the
whole recording (what the streamed encoder emits, exactly) gives CTC log-probabilities; the
partial result after the last chunk is then the CTC best path (``partial_search:
ctc_best_path``) or the best prefix of the frame-synchronous prefix search
(``partial_search: ctc_prefix``) at each ``--beams`` size.  Reported per data directory: WER
and CER of each, and the search's time per second of audio (one thread; the encoder's time is
not in it).  The words are the token-list units joined as ``Speech2Text``'s tokenizer joins them.

    python benchmarks/streaming_partials_cpu.py --asr_train_config exp/asr/config.yaml \\
        --asr_model_file exp/asr/valid.acc.ave.pth --data dump/raw/test dump/raw/test_30s \\
        --beams 1 4 10 --json
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import groupby
from pathlib import Path

from long_recording_trained_cpu import read_data_dir, word_errors


def best_path(log_probs, blank: int) -> list[int]:
    return [label for label, _ in groupby(log_probs.argmax(-1).tolist()) if label != blank]


def measure(args) -> list[dict]:
    import soundfile
    import torch
    from espnet2.bin.asr_inference import Speech2Text

    from espnet_mamba.integration.streaming_ctc_search import StreamingCTCPrefixSearch

    torch.set_num_threads(1)
    s2t = Speech2Text(asr_train_config=args.asr_train_config,
                      asr_model_file=args.asr_model_file, device="cpu")
    model = s2t.asr_model

    def text_of(ids):
        tokens = s2t.converter.ids2tokens(ids)
        return s2t.tokenizer.tokens2text(tokens) if s2t.tokenizer is not None else " ".join(tokens)

    rows = []
    for data in args.data:
        items = read_data_dir(data)
        searches = ["best_path", *(f"prefix_beam{b}" for b in args.beams)]
        errors = {s: [0, 0] for s in searches}  # word errors, character errors
        seconds = dict.fromkeys(searches, 0.0)
        words = chars = 0
        audio = 0.0
        for _, path, ref in items:
            speech, rate = soundfile.read(path, dtype="float32")
            audio += len(speech) / rate
            with torch.no_grad():
                enc, _ = model.encode(torch.from_numpy(speech)[None],
                                      torch.tensor([len(speech)]))
                log_probs = model.ctc.log_softmax(enc)[0]
            words, chars = words + len(ref.split()), chars + len(ref.replace(" ", ""))
            for name in searches:
                start = time.perf_counter()
                if name == "best_path":
                    ids = best_path(log_probs, model.blank_id)
                else:
                    search = StreamingCTCPrefixSearch(int(name[len("prefix_beam"):]),
                                                      model.blank_id)
                    search.extend(log_probs)
                    ids = search.best()[0]
                seconds[name] += time.perf_counter() - start
                hyp = text_of(ids)
                errors[name][0] += word_errors(ref.split(), hyp.split())
                errors[name][1] += word_errors(list(ref.replace(" ", "")),
                                               list(hyp.replace(" ", "")))
        rows.append({
            "data": str(data), "recordings": len(items), "audio_seconds": round(audio, 1),
            **{name: {"wer": round(100 * errors[name][0] / max(words, 1), 1),
                      "cer": round(100 * errors[name][1] / max(chars, 1), 1),
                      "ms_per_audio_second": round(1000 * seconds[name] / max(audio, 1e-9), 2)}
               for name in searches}})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--asr_train_config", type=Path, required=True)
    p.add_argument("--asr_model_file", type=Path, required=True)
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="data directories (wav.scp, text)")
    p.add_argument("--beams", type=int, nargs="+", default=[4, 10])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    for row in measure(args):
        print(json.dumps(row) if args.json else row)


if __name__ == "__main__":
    main()
