#!/usr/bin/env python3
"""Make the committed sentence lists local/text/sentences_{train,dev,test}.txt from WordNet 3.0.

Source: the example sentences (the double-quoted parts of the glosses) in WordNet 3.0's
data.{noun,verb,adj,adv}, as shipped by Debian's `wordnet-base` (/usr/share/wordnet).
Licence: WordNet 3.0 licence (Princeton University), reproduced in local/text/LICENSE.WordNet;
it allows copying and redistribution with the copyright notice.

Only run by hand when the lists are to be re-made (run.sh never reads /usr/share/wordnet):

    python local/prepare_text.py [--wordnet_dir /usr/share/wordnet] [--out_dir local/text]

Kept: sentences of 3-10 words, letters and apostrophes only after normalisation (upper case,
punctuation dropped), every word among the --vocab most frequent words of all WordNet glosses
and examples.  Duplicates removed, then a seeded shuffle split into disjoint test/dev/train.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import re
import sys
from pathlib import Path

# tools/tts_corpus.py: the WordNet reader shared with egs2/synth_speech
sys.path.insert(0, str(Path(os.path.abspath(__file__)).parents[4] / "tools"))
from tts_corpus import wordnet_glosses  # noqa: E402

WORD = re.compile(r"[A-Z]+(?:'[A-Z]+)?")


def normalise(s: str) -> list[str] | None:
    s = s.upper().replace("`", "'")
    s = re.sub(r"[.,;:!?\"()]", " ", s)
    s = s.replace("-", " ")
    words = s.split()
    if not words or not all(WORD.fullmatch(w) for w in words):
        return None  # digits, symbols, foreign letters: skip the sentence
    return words


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wordnet_dir", type=Path, default=Path("/usr/share/wordnet"))
    p.add_argument("--out_dir", type=Path, default=Path(__file__).parent / "text")
    p.add_argument("--vocab", type=int, default=2000, help="keep words among the N most frequent")
    p.add_argument("--min_words", type=int, default=3)
    p.add_argument("--max_words", type=int, default=10)
    p.add_argument("--n_test", type=int, default=200)
    p.add_argument("--n_dev", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    counts: collections.Counter = collections.Counter()
    examples = []
    for g in wordnet_glosses(args.wordnet_dir):
        words = normalise(g.replace('"', " "))
        if words is None:  # count what can be counted in messy glosses too
            words = WORD.findall(g.upper())
        counts.update(words)
        examples += re.findall(r'"([^"]+)"', g)
    frequent = {w for w, _ in counts.most_common(args.vocab)}

    kept = set()
    for ex in examples:
        words = normalise(ex)
        if (words and args.min_words <= len(words) <= args.max_words
                and all(w in frequent for w in words)):
            kept.add(" ".join(words))
    kept = sorted(kept)
    random.Random(args.seed).shuffle(kept)
    splits = {"test": kept[:args.n_test], "dev": kept[args.n_test:args.n_test + args.n_dev],
              "train": kept[args.n_test + args.n_dev:]}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in splits.items():
        (args.out_dir / f"sentences_{name}.txt").write_text("".join(s + "\n" for s in sorted(lines)))
        print(f"{name}: {len(lines)} sentences")
    print(f"from {len(examples)} WordNet examples, vocabulary {args.vocab} most frequent words")


if __name__ == "__main__":
    main()
