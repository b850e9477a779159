#!/usr/bin/env python3
"""Synthesise the mini_synth corpus offline: Kaldi-style data dirs of 16 kHz speech.

    python local/make_corpus.py --out_dir data --wav_dir corpus/wav [--n_train 2000] [--nj 2]

Text: seeded random digit strings (ZERO/OH/ONE..NINE, 1-7 digits) and the committed WordNet
example sentences in local/text/ (see local/text/README.md); train, dev and test texts are
disjoint (digit strings too).  Voices (no MBROLA):
  train: espeak-ng accents en-us, en-gb, en-gb-x-rp, en-gb-scotland, en-029 with a pool of
         variants; Pico en-US (py-nanotts, volume 0.5); flite kal16
  dev:   the train accents with variants held out of train (new speakers, seen accents)
  test:  espeak-ng accents held out of train (en-gb-x-gbclan: Lancaster, en-gb-x-gbcwmd: West
         Midlands) with held-out variants; Pico en-GB; flite kal (8 kHz voice)
A "speaker" is one voice (engine, accent, variant) with its own base speed and pitch; every
utterance jitters them a little.  Training utterances also get sox speed perturbation
(0.9-1.1), light noise (SNR 15-35 dB) and sometimes a telephone-band low-pass.

Long-context test sets (as in Speech-Mamba): utterances of one test voice with test texts,
concatenated with short pauses into recordings of about --long_durations seconds
(data/test_30s, test_60s, test_120s by default).

Everything is drawn from --seed in the main process, so the corpus is the same for any --nj;
the synthesis runs in a process pool with a progress bar.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import zlib
from pathlib import Path


# tools/tts_corpus.py: synthesis, augmentation and data dirs shared with egs2/synth_speech (this
# file is egs2/<recipe>/asr1/local/ of the repository; links are not resolved, so a copy of the recipe next to a
# tools/ link finds it)
sys.path.insert(0, str(Path(os.path.abspath(__file__)).parents[4] / "tools"))
from tts_corpus import (concat_long, require_tools, synth_all,  # noqa: E402
                        write_data_dir, write_durations)
DIGITS = ["ZERO", "OH", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
TEXT_DIR = Path(__file__).resolve().parent / "text"

# espeak-ng variants that sound like people (robots, whisper, croak left out)
VARIANTS_TRAIN = ["m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "klatt", "klatt2", "adam",
                  "andy", "annie", "david", "ed", "john", "linda", "max", "michael", "paul",
                  "rob", "steph", "zac", "norbert", "travis", "victor", "aunty", "grandpa"]
VARIANTS_DEV = ["m6", "f4", "benjamin", "robert", "alex"]
VARIANTS_TEST = ["m7", "f5", "klatt3", "belinda", "edward", "shelby", "quincy", "grandma"]
ACCENTS_TRAIN = ["en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029"]
ACCENTS_TEST = ["en-gb-x-gbclan", "en-gb-x-gbcwmd"]


# --------------------------------------------------------------------------------------------
# speakers

def make_speakers(split: str, rng: random.Random):
    """List of speaker dicts for a split, and the sampling weight of each."""
    spk = []
    if split == "train":
        for a in ACCENTS_TRAIN:
            for v in VARIANTS_TRAIN:
                spk.append(dict(engine="espeak", voice=f"{a}+{v}"))
        spk += [dict(engine="pico", voice="en-US"), dict(engine="flite", voice="kal16")]
    elif split == "dev":
        for a in ACCENTS_TRAIN:
            for v in VARIANTS_DEV:
                spk.append(dict(engine="espeak", voice=f"{a}+{v}"))
        spk += [dict(engine="pico", voice="en-US"), dict(engine="flite", voice="kal16")]
    else:  # test
        for i, v in enumerate(VARIANTS_TEST):
            spk.append(dict(engine="espeak", voice=f"{ACCENTS_TEST[i % 2]}+{v}"))
        spk += [dict(engine="pico", voice="en-GB"), dict(engine="flite", voice="kal")]
    n_espeak = sum(s["engine"] == "espeak" for s in spk)
    weights = []
    for s in spk:  # espeak 70 %, pico 15 %, flite 15 % of the utterances
        weights.append(0.7 / n_espeak if s["engine"] == "espeak" else 0.15)
        s["speed"] = rng.uniform(0.85, 1.15)  # base rate of this speaker
        s["pitch"] = rng.uniform(0.85, 1.15)
        name = f"{s['engine']}_{s['voice']}".replace("+", "_").replace("-", "")
        s["id"] = f"{split}_{name}".lower()
    return spk, weights


# --------------------------------------------------------------------------------------------
# text

def read_sentences(split: str):
    return (TEXT_DIR / f"sentences_{split}.txt").read_text().split("\n")[:-1]


def digit_string(rng: random.Random, min_len: int) -> str:
    return " ".join(rng.choice(DIGITS) for _ in range(rng.randint(min_len, 7)))


def draw_digits(n: int, rng: random.Random, min_len: int, forbidden: set) -> list:
    out = []
    for _ in range(n):
        for _ in range(1000):
            s = digit_string(rng, min_len)
            if s not in forbidden:
                break
        out.append(s)
    return out


def draw_texts(n: int, sentences: list, rng: random.Random, digits_frac: float, min_len: int,
               forbidden: set) -> list:
    n_dig = round(n * digits_frac)
    digits = draw_digits(n_dig, rng, min_len, forbidden)
    order = list(sentences)
    sents = []
    while len(sents) < n - n_dig:  # every sentence once before any repeats
        rng.shuffle(order)
        sents += order[: n - n_dig - len(sents)]
    texts = digits + sents
    rng.shuffle(texts)
    return texts


# --------------------------------------------------------------------------------------------
# jobs and data dirs

def make_jobs(split: str, texts, speakers, weights, rng: random.Random, wav_dir: Path,
              augment: bool, prefix: str = ""):
    jobs = []
    wav_dir.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        s = rng.choices(speakers, weights)[0] if isinstance(speakers, list) else speakers
        utt = f"{s['id']}-{prefix}{split}{i:05d}"
        job = dict(utt=utt, spk=s["id"], text=text, engine=s["engine"], voice=s["voice"],
                   speed=s["speed"] * rng.uniform(0.95, 1.05),
                   pitch=s["pitch"] * rng.uniform(0.95, 1.05),
                   seed=zlib.crc32(utt.encode()) ^ rng.getrandbits(31),
                   path=str(wav_dir / f"{utt}.wav"), level_db=-23.0)
        if augment:
            job["sox_speed"] = rng.uniform(0.9, 1.1)
            job["level_db"] = rng.uniform(-30, -18)
            if rng.random() < 0.7:
                job["snr_db"] = rng.uniform(15, 35)
                job["pink"] = rng.random() < 0.5
            if rng.random() < 0.1:
                job["lowpass"] = 3800
        jobs.append(job)
    return jobs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out_dir", type=Path, default=Path("data"))
    p.add_argument("--wav_dir", type=Path, default=Path("corpus/wav"))
    p.add_argument("--n_train", type=int, default=2000)
    p.add_argument("--n_dev", type=int, default=150)
    p.add_argument("--n_test", type=int, default=300)
    p.add_argument("--digits_frac", type=float, default=0.5,
                   help="share of digit strings among the utterances (the rest are sentences)")
    p.add_argument("--long_durations", default="30,60,120",
                   help="seconds per long-context recording, one test set each ('' for none)")
    p.add_argument("--long_recordings", default="8,4,2",
                   help="number of recordings per long-context set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nj", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    require_tools()

    rng = random.Random(args.seed)
    sentences = {s: read_sentences(s) for s in ("train", "dev", "test")}
    # digit strings: test first, then dev, then train, each avoiding the ones before it
    texts, used = {}, set()
    for split, n, min_len in (("test", args.n_test, 2), ("dev", args.n_dev, 2),
                              ("train", args.n_train, 1)):
        texts[split] = draw_texts(n, sentences[split], rng, args.digits_frac, min_len, used)
        used |= set(t for t in texts[split] if t.split()[0] in DIGITS)
    long_d = [float(d) for d in args.long_durations.split(",") if d.strip()]
    long_n = [int(n) for n in args.long_recordings.split(",") if n.strip()][: len(long_d)]
    long_n += [long_n[-1] if long_n else 1] * (len(long_d) - len(long_n))

    all_jobs, split_jobs = [], {}
    test_spk, test_w = None, None
    for split in ("train", "dev", "test"):
        spk, w = make_speakers(split, rng)
        if split == "test":
            test_spk, test_w = spk, w
        jobs = make_jobs(split, texts[split], spk, w, rng, args.wav_dir / split,
                         augment=(split == "train"))
        split_jobs[split] = jobs
        all_jobs += jobs
    # pool for the long-context sets: test voices (one voice per recording), test texts
    long_pools = {}
    for d, n in zip(long_d, long_n):
        name = f"test_{d:g}s"
        pool = []
        for r in range(n):
            s = test_spk[r % len(test_spk)]
            k = int(d / 1.0) + 2  # more than enough (utterances are longer than 1 s)
            tx = draw_texts(k, sentences["test"], rng, args.digits_frac, 2, set())
            pool += make_jobs("long", tx, s, None, rng, args.wav_dir / "pool" / name,
                              augment=False, prefix=f"{name}r{r}")
        long_pools[name] = (d, n, pool)
        all_jobs += pool

    durs = synth_all(all_jobs, args.nj, "synthesising")
    for split, jobs in split_jobs.items():
        d = args.out_dir / split
        write_data_dir(d, [(j["utt"], str(Path(j["path"]).resolve()), j["text"], j["spk"])
                           for j in jobs])
        write_durations(d, {j["utt"]: durs[j["utt"]] for j in jobs})
        print(f"{d}: {len(jobs)} utterances, {sum(durs[j['utt']] for j in jobs) / 60:.1f} min, "
              f"{len({j['spk'] for j in jobs})} voices", file=sys.stderr)
    for name, (d, n, pool) in long_pools.items():
        rows, rdurs = concat_long(name, d, n, pool, durs, args.wav_dir / name, rng)
        rows = [(u, str(Path(w).resolve()), t, s) for u, w, t, s in rows]
        write_data_dir(args.out_dir / name, rows)
        write_durations(args.out_dir / name, rdurs)
        print(f"{args.out_dir / name}: {n} recordings of "
              f"{min(rdurs.values()):.0f}-{max(rdurs.values()):.0f} s", file=sys.stderr)
    shutil.rmtree(args.wav_dir / "pool", ignore_errors=True)


if __name__ == "__main__":
    main()
