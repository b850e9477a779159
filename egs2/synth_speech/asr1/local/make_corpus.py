#!/usr/bin/env python3
"""Synthesise the synth_speech corpus offline: Kaldi data dirs of 16 kHz speech, sized in hours.

    python local/make_corpus.py --hours 20 --out_dir data --wav_dir corpus/wav [--nj 16]
    python local/make_corpus.py --hours 0.05 ...           # a smoke-size corpus

Text: WordNet 3.0's example sentences and definitions (local/wordnet_text.py writes the lists
and their licence to <out_dir>/local/text on the first run), split by sentence into disjoint
train, dev and test lists.  Sets:
  train               training voices, train sentences, augmented
  dev, test           training voices, dev / test sentences, clean
  test_unseen_voice   espeak-ng voices out of training (a held-out accent with every variant,
                      and held-out variants with every accent), test sentences, clean
  test_unseen_engine  the engine family out of training (--unseen_engine: Pico by default,
                      or flite), test sentences, clean
  test_long           single utterances of --long_voices training voices (test sentences,
                      clean), about max(--long_durations) seconds of each voice
  test_long_<N>s      test_long cut into recordings of about N s for each of --long_durations
                      (default 30, 60, 120, 300, 1200): each voice's utterances in order,
                      joined with 0.2-0.6 s pauses, transcripts joined in the same order; every
                      long set holds exactly test_long's utterances, so its WER against
                      test_long's measures the length of the recordings alone
Voices: espeak-ng's 8 English accents x its human-sounding variants (no MBROLA), flite kal,
kal16, awb, rms, slt, Pico en-US and en-GB; every utterance draws its speaking rate and pitch.
A speaker is one voice.  Augmentation of training utterances (sox, per utterance, seeded):
speed, pitch, reverb, a telephone-band low-pass and generated noise (white, low rumble, mains
hum) at 5-30 dB SNR, random level.

The whole plan (texts, voices, parameters, noise seeds) is drawn from --seed in the main
process, so the corpus is the same for any --nj.  The wavs are made in --nj processes; a run
that is started again skips the wavs that exist (a wav appears only once complete), and refuses
a --wav_dir made with other options.  <out_dir>/report.json (and the log) gives hours,
utterances and speakers per set, the vocabulary and each test set's OOV rate, and the speed of
generation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(os.path.abspath(__file__)).parents[4] / "tools"))
from tts_corpus import (cut_long, require_tools, synth_all, write_data_dir,  # noqa: E402
                        write_durations)
from wordnet_text import make_lists, oov_rate  # noqa: E402

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc"]
# espeak-ng 1.51's variants (voices/!v) that sound like people: robots, whisper, croak, the
# announcer, Demonic and the fast test voice are left out, and caleb / klatt6 (the same output
# as klatt, checked sample by sample)
VARIANTS = ["Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene",
            "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
            "Nguyen", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "adam", "anika",
            "antonio", "aunty", "belinda", "benjamin", "boris", "david", "ed", "edward",
            "edward2", "f1", "f2", "f3", "f4", "f5", "grandma", "grandpa", "gustave", "iven",
            "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3",
            "klatt4", "klatt5", "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
            "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy",
            "rob", "robert", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor",
            "zac"]
UNSEEN_ACCENT = "en-gb-x-gbcwmd"  # West Midlands: heard only in test_unseen_voice
UNSEEN_VARIANTS = ["Andrea", "Gene2", "belinda", "edward2", "f5", "iven4", "klatt5", "m7",
                   "quincy", "steph3"]
# flite's mean F0 per voice (Hz) before the pitch factor; rms ignores it
FLITE = {"kal": 100.0, "kal16": 100.0, "awb": 115.0, "rms": 100.0, "slt": 175.0}
PICO = ["en-US", "en-GB"]
ESPEAK_SHARE = 0.7  # of the utterances of a set; the other engines' voices share the rest
SETS = ("train", "dev", "test", "test_unseen_voice", "test_unseen_engine")
SECONDS_PER_WORD, SECONDS_PER_UTT = 0.31, 0.55  # mean length of a sentence (fit on made sets)


def voice(engine: str, name: str, **extra) -> dict:
    spk = f"{engine}_{name}".replace("+", "_").replace("-", "").lower()
    return dict(engine=engine, voice=name, id=spk, **extra)


def voice_sets(unseen_engine: str) -> dict:
    """Speakers of each set: {set: [voice dict]}."""
    seen_espeak, unseen_espeak = [], []
    for a in ACCENTS:
        for v in VARIANTS:
            held_out = a == UNSEEN_ACCENT or v in UNSEEN_VARIANTS
            (unseen_espeak if held_out else seen_espeak).append(voice("espeak", f"{a}+{v}"))
    flite = [voice("flite", v, f0=f0) for v, f0 in FLITE.items()]
    pico = [voice("pico", v) for v in PICO]
    if unseen_engine == "pico":
        seen, unseen = flite, pico
    elif unseen_engine == "flite":
        seen, unseen = pico, flite
    else:
        raise ValueError(f"--unseen_engine {unseen_engine!r}: pico or flite")
    train = seen_espeak + seen
    return {"train": train, "dev": train, "test": train, "test_unseen_voice": unseen_espeak,
            "test_unseen_engine": unseen}


def weights(voices: list) -> list:
    n_es = sum(v["engine"] == "espeak" for v in voices)
    n_other = len(voices) - n_es
    if n_es == 0 or n_other == 0:
        return [1.0] * len(voices)
    return [ESPEAK_SHARE / n_es if v["engine"] == "espeak" else (1 - ESPEAK_SHARE) / n_other
            for v in voices]


def draw_texts(seconds: float, min_utts: int, sentences: list, rng: random.Random) -> list:
    """Sentences (each once before any repeats) until about `seconds` of speech."""
    out, total, order = [], 0.0, []
    while total < seconds or len(out) < min_utts:
        if not order:
            order = list(sentences)
            rng.shuffle(order)
        s = order.pop()
        out.append(s)
        total += SECONDS_PER_UTT + SECONDS_PER_WORD * len(s.split())
    return out


def augmentation(rng: random.Random) -> dict:
    aug = {"level_db": rng.uniform(-35, -20)}
    if rng.random() < 0.5:
        aug["sox_speed"] = rng.uniform(0.9, 1.1)
    if rng.random() < 0.3:
        aug["sox_pitch"] = rng.uniform(-200, 200)
    if rng.random() < 0.3:
        aug["reverb"] = (rng.uniform(20, 80), rng.uniform(20, 100))
    if rng.random() < 0.6:
        aug["snr_db"] = rng.uniform(5, 30)
        aug["noise"] = rng.choice(["white", "lowfreq", "hum"])
    if rng.random() < 0.1:
        aug["lowpass"] = 3400
    return aug


def make_jobs(name: str, texts: list, voices: list, rng: random.Random, wav_dir: Path,
              augment: bool) -> list:
    jobs, w = [], weights(voices)
    for i, text in enumerate(texts):
        v = rng.choices(voices, w)[0]
        utt = f"{v['id']}-{name}{i:06d}"
        job = dict(utt=utt, spk=v["id"], text=text, engine=v["engine"], voice=v["voice"],
                   speed=rng.uniform(0.8, 1.25), pitch=rng.uniform(0.75, 1.3),
                   seed=zlib.crc32(utt.encode()) ^ rng.getrandbits(31),
                   path=str((wav_dir / name / f"{utt}.wav").resolve()), level_db=-23.0)
        if "f0" in v:
            job["f0"] = v["f0"]
        if augment:
            job.update(augmentation(rng))
        jobs.append(job)
    return jobs


def long_durations(spec: str) -> list:
    """--long_durations '30,60,120' -> [30.0, 60.0, 120.0] (seconds, > 0, no repeats)."""
    out = [float(x) for x in spec.split(",") if x.strip()]
    if any(d <= 0 for d in out) or len(set(out)) != len(out):
        sys.exit(f"error: --long_durations {spec!r}: positive seconds, each once (e.g. 30,60,120)")
    return sorted(out)


def long_set_name(seconds: float) -> str:
    return f"test_long_{seconds:g}s"


def long_jobs(n_voices: int, seconds: float, voices: list, sentences: list,
              rng: random.Random, wav_dir: Path) -> list:
    """test_long: n_voices distinct training voices (drawn with the training weights), each
    speaking about `seconds` of test sentences, clean."""
    w, chosen = weights(voices), []
    while len(chosen) < min(n_voices, len(voices)):
        v = rng.choices(voices, w)[0]
        if v not in chosen:
            chosen.append(v)
    jobs = []
    for v in chosen:
        jobs += make_jobs("test_long", draw_texts(seconds, 1, sentences, rng), [v], rng,
                          wav_dir, augment=False)
    return jobs


def plan_signature(args, text_stats: dict) -> dict:
    sig = {"hours": args.hours, "eval_frac": args.eval_frac, "min_eval_utts": args.min_eval_utts,
           "seed": args.seed, "unseen_engine": args.unseen_engine,
           "text": text_stats["options"], "text_sentences": text_stats["sentences"]}
    durations = long_durations(args.long_durations)
    if durations:  # test_long's utterances; the cuts into recordings are not synthesised
        sig |= {"long_voices": args.long_voices, "long_seconds": durations[-1]}
    return sig


def check_plan(wav_dir: Path, plan: dict, jobs: list):
    """A wav_dir is resumed only by the run that planned it: same options, same jobs."""
    # paths relative to the wav dir: a moved or copied wav dir resumes too
    rel = [dict(j, path=os.path.relpath(j["path"], wav_dir.resolve())) for j in jobs]
    plan = dict(plan, jobs=hashlib.sha256(json.dumps(rel, sort_keys=True).encode()).hexdigest())
    f = wav_dir / "plan.json"
    if f.is_file():
        old = json.loads(f.read_text())
        if old != plan:
            diff = {k: (old.get(k), plan.get(k)) for k in plan if old.get(k) != plan.get(k)}
            sys.exit(f"error: {wav_dir} was made with other options (was, now): {diff}; "
                     "remove it or use another --wav_dir")
    wav_dir.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(plan, indent=1) + "\n")


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its children that have ended (the pool's
    workers and the engines they ran)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def words(texts) -> list:
    return [w for t in texts for w in t.split()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hours", type=float, required=True, help="hours of training speech (about)")
    p.add_argument("--eval_frac", type=float, default=0.02,
                   help="hours of each of dev and the test sets, as a share of --hours")
    p.add_argument("--min_eval_utts", type=int, default=100,
                   help="utterances of each of dev and the test sets at least")
    p.add_argument("--unseen_engine", default="pico", choices=["pico", "flite"],
                   help="the engine family kept out of training (test_unseen_engine)")
    p.add_argument("--long_durations", default="30,60,120,300,1200",
                   help="seconds per recording of each long set test_long_<N>s ('' for none); "
                        "the longest is every test_long utterance of a voice in one recording")
    p.add_argument("--long_voices", type=int, default=1,
                   help="training voices that speak test_long (max(--long_durations) s each)")
    p.add_argument("--out_dir", type=Path, default=Path("data"))
    p.add_argument("--wav_dir", type=Path, default=Path("corpus/wav"))
    p.add_argument("--text_dir", type=Path, default=None,
                   help="sentence lists (made from WordNet if absent); default <out_dir>/local/text")
    p.add_argument("--wordnet_dir", type=Path, default=Path("/usr/share/wordnet"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nj", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if (args.hours <= 0 or args.eval_frac < 0 or args.min_eval_utts < 1 or args.nj < 1
            or args.long_voices < 1):
        sys.exit(f"error: --hours {args.hours} must be > 0, --eval_frac {args.eval_frac} >= 0, "
                 f"--min_eval_utts {args.min_eval_utts}, --nj {args.nj} and --long_voices "
                 f"{args.long_voices} >= 1")
    durations = long_durations(args.long_durations)
    require_tools()

    text_dir = args.text_dir or args.out_dir / "local" / "text"
    if not (text_dir / "stats.json").is_file():
        make_lists(text_dir, args.wordnet_dir)
    text_stats = json.loads((text_dir / "stats.json").read_text())
    sentences = {s: (text_dir / f"sentences_{s}.txt").read_text().splitlines()
                 for s in ("train", "dev", "test")}

    rng = random.Random(args.seed)
    voices = voice_sets(args.unseen_engine)
    eval_s = args.hours * 3600 * args.eval_frac
    jobs = {}
    for name in SETS:
        if name == "train":
            texts = draw_texts(args.hours * 3600, 1, sentences["train"], rng)
        else:
            texts = draw_texts(eval_s, args.min_eval_utts,
                               sentences["dev" if name == "dev" else "test"], rng)
        jobs[name] = make_jobs(name, texts, voices[name], rng, args.wav_dir, name == "train")
    sets = list(SETS)
    if durations:
        # drawn after the other sets, so that they do not depend on the long sets' options
        sets.append("test_long")
        jobs["test_long"] = long_jobs(args.long_voices, durations[-1], voices["train"],
                                      sentences["test"], rng, args.wav_dir)
        voices["test_long"] = sorted({j["spk"] for j in jobs["test_long"]})
    all_jobs = [j for name in sets for j in jobs[name]]
    check_plan(args.wav_dir, plan_signature(args, text_stats), all_jobs)
    for name in sets:
        (args.wav_dir / name).mkdir(parents=True, exist_ok=True)

    t0, cpu0 = time.time(), cpu_seconds()
    todo = {j["utt"] for j in all_jobs if not os.path.exists(j["path"])}
    durs = synth_all(all_jobs, args.nj, "synthesising", resume=True)
    seconds, cpu = time.time() - t0, cpu_seconds() - cpu0

    train_vocab = set(words(sentences["train"]))
    corpus_train_vocab = set(words(j["text"] for j in jobs["train"]))
    report = {"sets": {}, "text": text_stats, "options": vars(args) | {
        "out_dir": str(args.out_dir), "wav_dir": str(args.wav_dir), "text_dir": str(text_dir),
        "wordnet_dir": str(args.wordnet_dir)}}
    for name in sets:
        d = args.out_dir / name
        write_data_dir(d, [(j["utt"], j["path"], j["text"], j["spk"]) for j in jobs[name]])
        write_durations(d, {j["utt"]: durs[j["utt"]] for j in jobs[name]})
        texts = [j["text"] for j in jobs[name]]
        r = {"utterances": len(texts), "hours": sum(durs[j["utt"]] for j in jobs[name]) / 3600,
             "speakers": len({j["spk"] for j in jobs[name]}),
             "voices_in_set": len(voices[name]),
             "engines": sorted({j["engine"] for j in jobs[name]}),
             "words": len(words(texts)), "vocabulary": len(set(words(texts)))}
        if name != "train":
            # against every training sentence of the lists, and against the words the train
            # set as made here speaks (higher on a small corpus)
            r["oov_rate_text_lists"] = oov_rate(texts, train_vocab)
            r["oov_rate_train_set"] = oov_rate(texts, corpus_train_vocab)
        report["sets"][name] = r
        print(f"{d}: {r['utterances']} utterances, {r['hours']:.3f} h, {r['speakers']} speakers"
              f" ({', '.join(r['engines'])}), vocabulary {r['vocabulary']}"
              + (f", OOV {100 * r['oov_rate_train_set']:.1f} % of the train set's words, "
                 f"{100 * r['oov_rate_text_lists']:.1f} % of the training lists'"
                 if name != "train" else ""), file=sys.stderr)
    for target in durations:
        name = long_set_name(target)
        # its own seeded pauses: a set is the same whichever other durations are asked for
        rows, rec_durs = cut_long(name, target, jobs["test_long"], durs, args.wav_dir / name,
                                  random.Random(f"{args.seed}-{name}"))
        write_data_dir(args.out_dir / name, rows)
        write_durations(args.out_dir / name, rec_durs)
        report["sets"][name] = {
            "recordings": len(rows), "hours": sum(rec_durs.values()) / 3600,
            "seconds_min": min(rec_durs.values()), "seconds_max": max(rec_durs.values()),
            "speakers": len({r[3] for r in rows}), "source": "test_long",
            # test_long's words, hence its OOV rates
            "oov_rate_text_lists": report["sets"]["test_long"]["oov_rate_text_lists"],
            "oov_rate_train_set": report["sets"]["test_long"]["oov_rate_train_set"]}
        print(f"{args.out_dir / name}: {len(rows)} recordings of {min(rec_durs.values()):.0f}-"
              f"{max(rec_durs.values()):.0f} s (test_long's utterances)", file=sys.stderr)
    made, n_before = len(todo), len(all_jobs) - len(todo)
    audio_made = sum(durs[u] for u in todo)
    report["generation"] = {
        "utterances_made": made, "utterances_skipped": n_before, "seconds": seconds, "nj": args.nj,
        "cpu_count": os.cpu_count(), "audio_hours_made": audio_made / 3600,
        "utterances_per_second": made / seconds if made else None,
        "audio_seconds_per_second": audio_made / seconds if made else None,
        # CPU time of the synthesis (workers and engines): the rate of one core kept busy
        "cpu_seconds": cpu, "audio_seconds_per_cpu_second": audio_made / cpu if made else None}
    (args.out_dir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    g = report["generation"]
    if made:
        print(f"generation: {made} utterances ({audio_made / 3600:.3f} h) in {seconds:.1f} s with "
              f"--nj {args.nj} ({g['utterances_per_second']:.1f} utterances/s, "
              f"{g['audio_seconds_per_second']:.0f} s of audio a second), {cpu:.1f} CPU s "
              f"({g['audio_seconds_per_cpu_second']:.0f} s of audio a CPU second), "
              f"{n_before} already there", file=sys.stderr)
    else:
        print(f"generation: all {n_before} utterances were already there", file=sys.stderr)


if __name__ == "__main__":
    main()
