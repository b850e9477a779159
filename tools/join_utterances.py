#!/usr/bin/env python3
"""A training set with long recordings: a Kaldi data directory's utterances plus the same
utterances joined, one voice at a time and in order, into recordings of about ``--seconds``.

    python tools/join_utterances.py --src dump/raw/train --dst dump/raw/train_joined15 \\
        --wav_dir corpus/wav/train_joined15 --seconds 15

Each joined recording holds consecutive utterances of one speaker (``utt2spk``) with 0.2-0.6 s
pauses between them and their texts joined with spaces, as the recipes' long test sets are
made (``tts_corpus.cut_long``), so that a model sees speech of that length in training.  The
destination holds the joined recordings and, unless ``--joined_only``, the original
utterances too (wav.scp, text, utt2spk, spk2utt, utt2dur): twice the audio.  With ``--share S``
only a share S of each voice's utterances (picked at random) is joined and the others are kept
as they are: the same audio as the source, part of it in long recordings.  Deterministic from
``--seed``.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tts_corpus import cut_long, write_data_dir


def read_table(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise SystemExit(f"{path}: missing (a Kaldi data directory needs it)")
    table = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        key, _, value = line.partition(" ")
        if key:
            table[key] = value.strip()
        elif line.strip():
            raise SystemExit(f"{path}:{n}: no utterance id")
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", type=Path, required=True, help="data dir: wav.scp, text, utt2spk, "
                                                           "utt2dur")
    p.add_argument("--dst", type=Path, required=True)
    p.add_argument("--wav_dir", type=Path, required=True, help="where the joined wavs go")
    p.add_argument("--seconds", type=float, required=True, help="length of a joined recording")
    p.add_argument("--joined_only", action="store_true",
                   help="leave the original utterances out of --dst")
    p.add_argument("--share", type=float, default=None,
                   help="join only this share of each voice's utterances, keep the rest as "
                        "they are (the same audio as --src)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.seconds > 0:
        raise SystemExit(f"--seconds must be > 0, got {args.seconds}")
    if args.share is not None and not 0 < args.share <= 1:
        raise SystemExit(f"--share must be in (0, 1], got {args.share}")
    if args.share is not None and args.joined_only:
        raise SystemExit("--share keeps the utterances it does not join: it cannot be combined "
                         "with --joined_only")
    wavs, texts = read_table(args.src / "wav.scp"), read_table(args.src / "text")
    spks, durs = read_table(args.src / "utt2spk"), read_table(args.src / "utt2dur")
    for name, table in (("text", texts), ("utt2spk", spks), ("utt2dur", durs)):
        missing = sorted(set(wavs) - set(table))
        if missing:
            raise SystemExit(f"{args.src / name}: no entry for {len(missing)} utterances of "
                             f"wav.scp, e.g. {missing[0]}")
    for utt, path in wavs.items():
        if " " in path or path.endswith("|"):
            raise SystemExit(f"{args.src / 'wav.scp'}: {utt}: only plain wav paths can be "
                             f"joined, got {path!r}")
    utts = [{"utt": u, "path": wavs[u], "text": texts[u], "spk": spks[u]} for u in sorted(wavs)]
    seconds = {u: float(d) for u, d in durs.items()}
    name = f"joined{args.seconds:g}s"
    rng = random.Random(args.seed)
    kept = [] if args.joined_only else utts
    if args.share is not None:
        utts, kept = pick_share(utts, args.share, rng)
    rows, rec_durs = cut_long(name, args.seconds, utts, seconds, args.wav_dir, rng)
    rows += [(u["utt"], u["path"], u["text"], u["spk"]) for u in kept]
    rec_durs.update({u["utt"]: seconds[u["utt"]] for u in kept})
    write_data_dir(args.dst, rows)
    with open(args.dst / "utt2dur", "w") as f:
        f.writelines(f"{u} {rec_durs[u]:.3f}\n" for u in sorted(rec_durs))
    joined = len(rec_durs) - len(kept)
    print(f"{args.dst}: {joined} joined recordings of about {args.seconds:g} s "
          f"(mean {sum(rec_durs[r[0]] for r in rows if name in r[0]) / max(joined, 1):.1f} s)"
          f"{f' + {len(kept)} original utterances' if kept else ''}")


def pick_share(utts, share: float, rng: random.Random):
    """(to join, to keep): round(share x n) of each voice's n utterances, picked at random,
    at least one; both lists in the input's order."""
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u["spk"], []).append(i)
    picked = set()
    for spk in sorted(by_spk):
        idx = by_spk[spk]
        picked.update(rng.sample(idx, max(1, round(share * len(idx)))))
    return ([u for i, u in enumerate(utts) if i in picked],
            [u for i, u in enumerate(utts) if i not in picked])


if __name__ == "__main__":
    main()
