#!/usr/bin/env python3
"""The sentences of the synth_speech corpus: WordNet 3.0's example sentences and glosses.

    python local/wordnet_text.py --out_dir data/local/text [--wordnet_dir /usr/share/wordnet]

Source: the glosses of WordNet 3.0's data.{noun,verb,adj,adv} as Debian's `wordnet-base` ships
them (/usr/share/wordnet; `bash tools/install_recipe_deps.sh` installs it).  Each gloss gives
its definitions (the parts between semicolons, parenthesised remarks dropped) and its example
sentences (the double-quoted parts).  Licence: the WordNet 3.0 licence (Princeton University),
written next to the lists as LICENSE.WordNet (from the header of data.noun); it allows copying
and redistribution with the copyright notice.

Normalisation: lower case; '&' -> and, '%' -> percent; whole numbers spelled out (1100-1999
and 2000-2099 as years); sentences with decimals, ordinals written in digits or anything but
letters and apostrophes after punctuation is dropped are left out; then --min_words to
--max_words words, duplicates removed.  A seeded shuffle splits them by sentence into disjoint
test, dev and train lists.  Writes sentences_{train,dev,test}.txt, LICENSE.WordNet and
stats.json (sentences, vocabulary sizes, dev/test OOV rates against the training vocabulary).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(os.path.abspath(__file__)).parents[4] / "tools"))
from tts_corpus import wordnet_glosses, wordnet_licence  # noqa: E402

WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SPLITS = ("train", "dev", "test")


def spell(n: int) -> str:
    """A whole number below a billion in words: 1234 -> one thousand two hundred thirty four."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else " " + ONES[n % 10])
    for size, name in ((10 ** 6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return f"{spell(n // size)} {name}" + (f" {spell(rest)}" if rest else "")
    raise AssertionError(n)


def spell_number(token: str) -> str:
    n = int(token.replace(",", ""))
    if len(token) == 4 and (1100 <= n <= 1999 or 2010 <= n <= 2099):  # a year: nineteen ninety
        hi, lo = divmod(n, 100)
        return f"{spell(hi)} " + ("hundred" if lo == 0 else ("oh " + ONES[lo] if lo < 10
                                                              else spell(lo)))
    if n >= 10 ** 9:
        raise ValueError(token)
    return spell(n)


def normalise(s: str) -> list[str] | None:
    """Words of a sentence, or None when it cannot be read out plainly."""
    s = s.lower().replace("`", "'").replace("&", " and ").replace("%", " percent ")
    s = re.sub(r"\([^()]*\)", " ", s)  # remarks: "(botany)", "(`cut' is often used ...)"
    if re.search(r"\d[.:/]\d|\d(st|nd|rd|th)\b", s):
        return None  # decimals, times, fractions, ordinals: no single reading
    # numbers of more than nine digits become "#", which drops the sentence below
    s = re.sub(r"\d{1,3}(?:,\d{3})+|\d+", lambda m: f" {spell_number(m.group())} "
               if len(m.group().replace(",", "")) <= 9 else " # ", s)
    s = re.sub(r"[-/]", " ", s)
    s = re.sub(r"[.,;:!?\"()\[\]]", " ", s)
    words = [w.strip("'") for w in s.split()]
    words = [w for w in words if w]
    if not words or not all(WORD.fullmatch(w) for w in words):
        return None  # symbols, foreign letters, numbers too long
    return words


def gloss_sentences(gloss: str):
    """The definitions and the example sentences of one gloss."""
    yield from re.findall(r'"([^"]+)"', gloss)
    for part in re.sub(r'"[^"]*"', " ", gloss).split(";"):
        if part.strip():
            yield part


def make_lists(out_dir: Path, wordnet_dir: Path = Path("/usr/share/wordnet"), min_words: int = 3,
               max_words: int = 30, n_test: int = 3000, n_dev: int = 1500, seed: int = 1) -> dict:
    """Write the lists, the licence and stats.json into out_dir; return the stats."""
    if not (wordnet_dir / "data.noun").is_file():
        sys.exit(f"error: --wordnet_dir {wordnet_dir} has no data.noun (WordNet 3.0): "
                 "run 'bash tools/install_recipe_deps.sh' (Debian package wordnet-base)")
    kept, n_read = set(), 0
    for gloss in wordnet_glosses(wordnet_dir):
        for sent in gloss_sentences(gloss):
            n_read += 1
            words = normalise(sent)
            if words and min_words <= len(words) <= max_words:
                kept.add(" ".join(words))
    kept = sorted(kept)
    if len(kept) < n_test + n_dev + 1:
        sys.exit(f"error: only {len(kept)} sentences for --n_test {n_test} + --n_dev {n_dev} "
                 "+ training")
    random.Random(seed).shuffle(kept)
    splits = {"test": kept[:n_test], "dev": kept[n_test:n_test + n_dev],
              "train": kept[n_test + n_dev:]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in splits.items():
        (out_dir / f"sentences_{name}.txt").write_text("".join(s + "\n" for s in sorted(lines)))
    (out_dir / "LICENSE.WordNet").write_text(
        "The sentence lists in this directory are WordNet 3.0's example sentences and glosses,\n"
        "normalised and filtered by egs2/synth_speech/asr1/local/wordnet_text.py.  WordNet's\n"
        "licence (the header of its data files) follows.\n\n" + wordnet_licence(wordnet_dir))
    train_vocab = {w for s in splits["train"] for w in s.split()}
    stats = {"source_sentences": n_read, "sentences": {k: len(v) for k, v in splits.items()},
             "vocabulary": {k: len({w for s in v for w in s.split()}) for k, v in splits.items()},
             "oov_rate": {k: oov_rate(splits[k], train_vocab) for k in ("dev", "test")},
             "options": dict(min_words=min_words, max_words=max_words, n_test=n_test,
                             n_dev=n_dev, seed=seed)}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wordnet_dir", type=Path, default=Path("/usr/share/wordnet"))
    p.add_argument("--out_dir", type=Path, required=True)
    p.add_argument("--min_words", type=int, default=3)
    p.add_argument("--max_words", type=int, default=30)
    p.add_argument("--n_test", type=int, default=3000, help="sentences held out for the test sets")
    p.add_argument("--n_dev", type=int, default=1500)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(make_lists(a.out_dir, a.wordnet_dir, a.min_words, a.max_words, a.n_test,
                                a.n_dev, a.seed)))


def oov_rate(sentences, vocab) -> float:
    """Share of the running words of `sentences` that are not in `vocab`."""
    words = [w for s in sentences for w in s.split()]
    return sum(w not in vocab for w in words) / max(1, len(words))


if __name__ == "__main__":
    main()
