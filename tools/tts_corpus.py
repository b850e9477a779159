"""Speech synthesis and augmentation shared by the synthetic-speech recipes.

egs2/mini_synth/asr1/local/make_corpus.py and egs2/synth_speech/asr1/local/make_corpus.py import
this module (they put tools/ on sys.path): the TTS engines (espeak-ng, flite, Pico through
py-nanotts), sox resampling and augmentation, levelling and generated noise, the process pool
that writes the wavs, the Kaldi data dirs, and the reader of WordNet's glosses.  A job is a dict
drawn in the recipe's main process from its seed, so the audio does not depend on the pool.

Job keys: utt, spk, text, engine (espeak | flite | pico), voice, speed, pitch (TTS factors),
seed (noise and pauses), path, level_db, f0 (flite's mean F0 before the pitch factor, Hz;
100 if absent); optional augmentation: sox_speed (factor),
sox_pitch (cents), reverb (reverberance %, room scale %), lowpass (Hz), snr_db with
noise (white | lowfreq | hum; the older key pink=True means lowfreq).
"""

from __future__ import annotations

import importlib.util
import io
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000


def missing_tools() -> list[str]:
    """The engines that are not installed (empty when synthesis can run)."""
    missing = [b for b in ("espeak-ng", "flite", "sox") if shutil.which(b) is None]
    if importlib.util.find_spec("py_nanotts") is None:
        missing.append("py-nanotts (Python package)")
    return missing


def require_tools():
    missing = missing_tools()
    if missing:
        sys.exit(f"error: missing {', '.join(missing)}: run 'bash tools/install_recipe_deps.sh' "
                 "from the repository root")


def run(cmd, stdin=None):
    p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.decode(errors='replace')[-500:]}")
    return p.stdout


# Pico reads memory it has not written (the same call gives slightly other samples after
# other work in the process), so every utterance is spoken by a freshly started interpreter,
# whose memory starts the same each time
PICO_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); from py_nanotts import NanoTTS; "
             "sys.stdout.buffer.write(NanoTTS().speak(sys.argv[2], voice=sys.argv[3], "
             "speed=float(sys.argv[4]), pitch=float(sys.argv[5]), volume=float(sys.argv[6])))")


def pico_speak(text: str, voice: str, speed: float, pitch: float, volume: float) -> bytes:
    """Pico's 16 kHz 16-bit PCM for text (py-nanotts), the same bytes for the same call."""
    site = os.path.dirname(os.path.dirname(importlib.util.find_spec("py_nanotts").origin))
    return run([sys.executable, "-I", "-S", "-c", PICO_CODE, site, text, voice, repr(speed),
                repr(pitch), repr(volume)])


def tts(job) -> bytes:
    """Raw synthesis of one utterance as a WAV (any rate) in memory."""
    eng, voice, text = job["engine"], job["voice"], job["text"]
    if eng == "espeak":
        return run(["espeak-ng", "--stdout", "-v", voice, "-s", str(int(170 * job["speed"])),
                    "-p", str(int(50 * job["pitch"])), text.lower()])
    if eng == "flite":
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            run(["flite", "-voice", voice, "--setf", f"duration_stretch={1 / job['speed']:.3f}",
                 "--setf", f"int_f0_target_mean={job.get('f0', 100) * job['pitch']:.1f}",
                 "-t", text.lower(),
                 "-o", f.name])
            return Path(f.name).read_bytes()
    if eng == "pico":
        pcm = pico_speak(text.lower(), voice=voice, speed=job["speed"], pitch=job["pitch"],
                         volume=0.5)  # louder clips
        buf = io.BytesIO()
        sf.write(buf, np.frombuffer(pcm, dtype="<i2"), SR, format="WAV", subtype="PCM_16")
        return buf.getvalue()
    raise ValueError(f"utterance {job['utt']}: unknown engine {eng!r} (espeak, flite or pico)")


def sox_effects(job) -> list[str]:
    """sox effects: speed and pitch before resampling to 16 kHz, reverb and low-pass after."""
    effects = ["rate", "-h", str(SR)]
    if job.get("sox_speed", 1.0) != 1.0:
        effects = ["speed", f"{job['sox_speed']:.3f}"] + effects
    if job.get("sox_pitch"):
        effects = ["pitch", f"{job['sox_pitch']:.0f}"] + effects
    if job.get("reverb"):
        reverberance, room = job["reverb"]
        effects += ["reverb", f"{reverberance:.0f}", "50", f"{room:.0f}"]
    if job.get("lowpass"):
        effects += ["lowpass", str(job["lowpass"])]
    return effects


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(n).astype(np.float32)
    if kind == "lowfreq":  # integrated white noise, its slow drift taken out: a low rumble
        noise = np.cumsum(noise) * 0.02
        noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
    elif kind == "hum":  # mains hum (50 or 60 Hz and harmonics) over a little white noise
        t = np.arange(n) / SR
        f0 = rng.choice([50.0, 60.0])
        hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
                  for k in range(1, 6))
        noise = 0.1 * noise + hum.astype(np.float32) * 3
    elif kind != "white":
        raise ValueError(f"noise {kind!r}: white, lowfreq or hum")
    return noise


def synth(job):
    """Synthesise, resample to 16 kHz (+ sox augmentation), level, noise; write the wav."""
    wav = tts(job)
    # -R: sox's dither from a fixed seed, so that a job always gives the same samples
    out = run(["sox", "-R", "-V1", "-t", "wav", "-", "-t", "wav", "-b", "16", "-c", "1", "-",
               *sox_effects(job)], stdin=wav)
    x, sr = sf.read(io.BytesIO(out), dtype="float32")
    assert sr == SR, sr
    x = trim(x)
    rng = np.random.default_rng(job["seed"])
    lead, tail = (int(SR * rng.uniform(0.05, 0.3)) for _ in range(2))
    x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(tail, np.float32)])
    rms = math.sqrt(float(np.mean(x ** 2))) + 1e-9
    x = x * (10 ** (job["level_db"] / 20) / rms)
    if job.get("snr_db") is not None:
        noise = make_noise(job.get("noise", "lowfreq" if job.get("pink") else "white"), len(x),
                           rng)
        noise *= 10 ** ((job["level_db"] - job["snr_db"]) / 20) / (np.std(noise) + 1e-9)
        x = x + noise
    x = np.clip(x, -0.99, 0.99)
    # written under another name and renamed: an interrupted run leaves no half wav behind
    part = f"{job['path']}.part"
    sf.write(part, x, SR, subtype="PCM_16", format="WAV")
    os.replace(part, job["path"])
    return job["utt"], len(x) / SR


def trim(x: np.ndarray, thresh: float = 1e-3) -> np.ndarray:
    idx = np.flatnonzero(np.abs(x) > thresh)
    return x[idx[0]: idx[-1] + 1] if len(idx) else x


def synth_all(jobs, nj: int, desc: str, resume: bool = False):
    """Synthesise the jobs in a pool of nj processes -> {utt: seconds}.  With resume, a job whose
    wav exists is not made again (a wav appears only once complete, see synth)."""
    durs = {}
    if resume:
        todo = []
        for j in jobs:
            if os.path.exists(j["path"]):
                durs[j["utt"]] = sf.info(j["path"]).frames / SR
            else:
                todo.append(j)
        if durs:
            print(f"{desc}: {len(durs)} utterances already made, {len(todo)} to go",
                  file=sys.stderr, flush=True)
        jobs = todo
    if not jobs:
        return durs
    tqdm = None
    if sys.stderr.isatty():  # a bar on a terminal; in a log file, a line every 10 %
        try:
            from tqdm import tqdm
        except ImportError:
            pass
    t0 = time.time()
    ctx = mp.get_context("fork")
    made = {}
    with ctx.Pool(nj) as pool:
        it = pool.imap_unordered(synth, jobs, chunksize=8)
        if tqdm is not None:
            it = tqdm(it, total=len(jobs), desc=desc, unit="utt", file=sys.stderr,
                      mininterval=1.0, dynamic_ncols=True)
        for i, (utt, d) in enumerate(it, 1):
            made[utt] = d
            if tqdm is None and (i % max(1, len(jobs) // 10) == 0 or i == len(jobs)):
                print(f"{desc}: {i}/{len(jobs)}", file=sys.stderr, flush=True)
    total = sum(made.values())
    print(f"{desc}: {len(jobs)} utterances, {total / 3600:.2f} h of audio, "
          f"{time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    durs.update(made)
    return durs


def write_data_dir(d: Path, rows):
    """rows: (utt, wav path, text, spk); Kaldi sort order (C locale) by utterance id."""
    d.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows)
    with open(d / "wav.scp", "w") as f:
        f.writelines(f"{u} {w}\n" for u, w, _, _ in rows)
    with open(d / "text", "w") as f:
        f.writelines(f"{u} {t}\n" for u, _, t, _ in rows)
    with open(d / "utt2spk", "w") as f:
        f.writelines(f"{u} {s}\n" for u, _, _, s in rows)
    spk2utt = defaultdict(list)
    for u, _, _, s in rows:
        spk2utt[s].append(u)
    with open(d / "spk2utt", "w") as f:
        f.writelines(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items()))


def write_durations(d: Path, durs: dict):
    with open(d / "utt2dur", "w") as f:
        f.writelines(f"{u} {durs[u]:.3f}\n" for u in sorted(durs))


def wordnet_glosses(wordnet_dir: Path):
    """The glosses (definitions; example sentences in double quotes) of WordNet's data files."""
    for pos in ("noun", "verb", "adj", "adv"):
        with open(wordnet_dir / f"data.{pos}", encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # licence header
                yield line.split("|", 1)[1].strip()


def wordnet_licence(wordnet_dir: Path) -> str:
    """WordNet's licence, as the header of its data.noun gives it (numbered lines)."""
    lines = []
    with open(wordnet_dir / "data.noun", encoding="latin-1") as f:
        for line in f:
            if not line.startswith("  "):
                break
            lines.append(line[2:].split(" ", 1)[1].rstrip() if " " in line[2:] else "")
    return "\n".join(lines) + "\n"
