#!/usr/bin/env python3
"""A tiny synthetic corpus in LibriSpeech's layout, for the README's quick check.

    python3 local/make_tiny_corpus.py --out tiny_librispeech \\
        [--parts train-clean-100:120,dev-clean:12,test-clean:12] [--nj 2] [--seed 0]

Writes OUT/LibriSpeech/<part>/<reader>/<chapter>/<reader>-<chapter>-<n>.flac (16 kHz) and
<reader>-<chapter>.trans.txt, as the real corpus has them, for only the parts named (so a run
on it also checks that absent parts are handled).  The speech is made offline by
egs2/mini_synth/asr1/local/make_corpus.py of this repository (espeak-ng, flite, Pico voices;
`bash tools/install_recipe_deps.sh` installs them): train parts get its training voices with
its augmentation, dev-* its held-out dev voices, test-* its test voices.  Texts are its digit
strings and WordNet sentences, upper case as LibriSpeech's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
from collections import defaultdict
from pathlib import Path

# this file is egs2/<recipe>/asr1/local/ (librispeech_100's local/ is a link: do not resolve it)
EGS2 = Path(os.path.abspath(__file__)).parents[3]
MAKE_CORPUS = EGS2 / "mini_synth" / "asr1" / "local" / "make_corpus.py"


def load_make_corpus():
    if not MAKE_CORPUS.is_file():
        sys.exit(f"error: {MAKE_CORPUS} is missing (this script uses the synthesis of "
                 "egs2/mini_synth/asr1 in this repository)")
    sys.path.insert(0, str(MAKE_CORPUS.parent))  # a real import: its pool pickles its functions
    import make_corpus

    return make_corpus


def voice_split(part: str) -> str:
    """Which of mini_synth's voice sets a part gets."""
    if part.startswith("train-"):
        return "train"
    if part.startswith("dev-"):
        return "dev"
    if part.startswith("test-"):
        return "test"
    raise ValueError(f"unknown LibriSpeech part {part!r} (train-*, dev-* or test-*)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="corpus root (LIBRISPEECH)")
    p.add_argument("--parts", default="train-clean-100:120,dev-clean:12,test-clean:12",
                   help="comma-separated PART:UTTERANCES")
    p.add_argument("--nj", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    mc = load_make_corpus()
    missing = [b for b in ("espeak-ng", "flite", "sox") if not mc.shutil.which(b)]
    if importlib.util.find_spec("py_nanotts") is None:
        missing.append("py-nanotts (Python package)")
    if missing:
        sys.exit(f"error: missing {', '.join(missing)}: run 'bash tools/install_recipe_deps.sh'"
                 " from the repository root")
    rng = random.Random(args.seed)
    sentences = {s: mc.read_sentences(s) for s in ("train", "dev", "test")}
    jobs, trans, used, reader_of = [], defaultdict(list), set(), {}
    for k, spec in enumerate(x for x in args.parts.split(",") if x):
        part, _, n = spec.partition(":")
        split = voice_split(part)
        speakers, weights = mc.make_speakers(split, rng)
        texts = mc.draw_texts(int(n), sentences[split], rng, 0.5, 2, used)
        used |= {t for t in texts if t.split()[0] in mc.DIGITS}
        tmp = args.out / "tmp"  # make_jobs' paths; every job is moved below
        part_jobs = mc.make_jobs(split, texts, speakers, weights, rng, tmp, augment=split == "train")
        tmp.rmdir()
        counts = defaultdict(int)
        for job in part_jobs:
            # one reader (a number, as in LibriSpeech) per voice and part, one chapter each
            reader = reader_of.setdefault((part, job["spk"]), 100 + len(reader_of))
            chapter = 1000 * (k + 1) + reader
            utt = f"{reader}-{chapter}-{counts[reader]:04d}"
            counts[reader] += 1
            chapter_dir = args.out / "LibriSpeech" / part / str(reader) / str(chapter)
            chapter_dir.mkdir(parents=True, exist_ok=True)
            job.update(utt=utt, path=str(chapter_dir / f"{utt}.flac"))  # soundfile: FLAC
            trans[chapter_dir / f"{reader}-{chapter}.trans.txt"].append(f"{utt} {job['text']}")
        jobs += part_jobs
        print(f"{args.out / 'LibriSpeech' / part}: {len(part_jobs)} utterances, "
              f"{len(counts)} readers", file=sys.stderr)
    mc.synth_all(jobs, args.nj, "synthesising")
    for path, lines in trans.items():
        path.write_text("".join(f"{x}\n" for x in sorted(lines)))


if __name__ == "__main__":
    main()
