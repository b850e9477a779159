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

Long recordings (one voice's utterances joined with pauses, as in Speech-Mamba's long-context
sets): concat_long draws recordings of about a target length from a pool (mini_synth),
cut_long cuts every utterance of a set, in order, into recordings of about a target length
(synth_speech: each long set holds exactly the words of its short set).
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


def prefix_dir(prefix: str | os.PathLike) -> Path:
    """The folder of a TTS bundle (tools/gpu/fetch_tts.sh): a prefix folder as is, or its
    .tar.xz unpacked once into $TMPDIR (default /tmp), next to a copy from another run."""
    src = Path(prefix).resolve()
    if src.is_dir():
        root = src
    elif src.is_file() and src.name.endswith(".tar.xz"):
        st = src.stat()
        root = Path(tempfile.gettempdir()) / f"tts_prefix-{st.st_size}-{int(st.st_mtime)}"
        if not (root / "prefix" / "BUNDLE.txt").is_file():
            import tarfile
            part = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
            with tarfile.open(src) as tar:
                tar.extractall(part, filter="tar")
            try:
                part.rename(root)
            except OSError:  # another process unpacked it meanwhile
                shutil.rmtree(part, ignore_errors=True)
        root = root / "prefix"
    else:
        raise FileNotFoundError(f"TTS bundle {prefix}: neither a folder nor a .tar.xz file "
                                "(tools/gpu/fetch_tts.sh makes .gpu/tts/tts_prefix.tar.xz)")
    if src.is_dir() and (root / "prefix" / "BUNDLE.txt").is_file():
        root = root / "prefix"  # the folder the archive unpacks into
    for sub in ("bin/espeak-ng", "bin/flite", "bin/sox", "python/py_nanotts", "text/stats.json"):
        if not (root / sub).exists():
            raise FileNotFoundError(f"TTS bundle {prefix}: no {sub} in {root}")
    return root


def prefix_environment(prefix) -> dict[str, str]:
    """The variables that make a bundle's engines the ones the recipes run: PATH (its wrappers
    first; they set their own LD_LIBRARY_PATH and ESPEAK_DATA_PATH), PYTHONPATH (py_nanotts)
    and SYNTH_SPEECH_TEXT_DIR (egs2/synth_speech's sentence lists, made from WordNet)."""
    root = prefix_dir(prefix)
    env = {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "python"),
                                                       os.environ.get("PYTHONPATH")])),
           "SYNTH_SPEECH_TEXT_DIR": str(root / "text")}
    return env


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


def pause(rng) -> np.ndarray:
    """The silence between two joined utterances: 0.2-0.6 s (one draw of rng, a random.Random)."""
    return np.zeros(int(SR * rng.uniform(0.2, 0.6)), np.float32)


def write_recording(path: Path, parts) -> float:
    """Join arrays into one 16-bit wav at path; its length in seconds."""
    x = np.concatenate(parts)
    sf.write(path, x, SR, subtype="PCM_16")
    return len(x) / SR


def concat_long(name: str, target: float, n_rec: int, pool_jobs, durs, wav_dir: Path, rng):
    """n_rec recordings of about `target` s, each from consecutive pool utterances of one voice
    (voices in turn; an utterance that would pass 1.1 x target is left out).  Returns the data
    dir rows (utt, wav, text, spk) and {utt: seconds}."""
    by_spk = defaultdict(list)
    for j in pool_jobs:
        by_spk[j["spk"]].append(j)
    spks = sorted(by_spk)
    rows, rec_durs = [], {}
    wav_dir.mkdir(parents=True, exist_ok=True)
    for r in range(n_rec):
        spk = spks[r % len(spks)]
        parts, texts, total = [], [], 0.0
        while by_spk[spk] and total < target:
            j = by_spk[spk].pop()
            if parts and total + durs[j["utt"]] > target * 1.1:
                continue
            x, _ = sf.read(j["path"], dtype="float32")
            gap = pause(rng)
            parts += [x, gap]
            texts.append(j["text"])
            total += durs[j["utt"]] + len(gap) / SR
        utt = f"{spk}-{name}{r:03d}"
        path = wav_dir / f"{utt}.wav"
        rec_durs[utt] = write_recording(path, parts)
        rows.append((utt, str(path), " ".join(texts), spk))
    return rows, rec_durs


def cut_points(lengths, k: int) -> list[int]:
    """Where to cut a sequence of lengths into k consecutive non-empty groups of about equal
    sums: the group starts (first 0), each cut at the running sum nearest to j / k of the total."""
    total, cum = sum(lengths), np.cumsum(lengths)
    starts = [0]
    for j in range(1, k):
        i = int(np.argmin(np.abs(cum - total * j / k))) + 1  # a group starts after element i - 1
        i = min(max(i, starts[-1] + 1), len(lengths) - (k - j))
        starts.append(i)
    return starts


def cut_long(name: str, target: float, utts, durs, wav_dir: Path, rng):
    """Every utterance of `utts` (dicts with utt, path, text, spk; in order) once, each voice's
    in order, joined with pauses into recordings of about `target` s: a voice with T s of speech
    and pauses gets max(1, round(T / target)) recordings of about equal length.  Returns the data
    dir rows (utt, wav, text, spk) and {utt: seconds}."""
    by_spk = defaultdict(list)
    for u in utts:
        by_spk[u["spk"]].append(u)
    rows, rec_durs = [], {}
    wav_dir.mkdir(parents=True, exist_ok=True)
    r = 0
    for spk in sorted(by_spk):
        us = by_spk[spk]
        gaps = [pause(rng) for _ in us]
        lengths = [durs[u["utt"]] + len(g) / SR for u, g in zip(us, gaps)]
        k = max(1, min(len(us), round(sum(lengths) / target)))
        starts = cut_points(lengths, k) + [len(us)]
        for a, b in zip(starts, starts[1:]):
            parts = []
            for u, g in zip(us[a:b], gaps[a:b]):
                parts += [sf.read(u["path"], dtype="float32")[0], g]
            utt = f"{spk}-{name}{r:03d}"
            path = wav_dir / f"{utt}.wav"
            rec_durs[utt] = write_recording(path, parts)
            rows.append((utt, str(path), " ".join(u["text"] for u in us[a:b]), spk))
            r += 1
    return rows, rec_durs


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


if __name__ == "__main__":
    import argparse
    import shlex

    p = argparse.ArgumentParser(description="The recipes' speech synthesis (imported by them); "
                                "as a command: the environment of a TTS bundle.")
    p.add_argument("--prefix_env", metavar="BUNDLE", required=True,
                   help="print 'export NAME=value' lines for a bundle of tools/gpu/fetch_tts.sh "
                        "(a folder or its .tar.xz, unpacked once under /tmp): "
                        'eval "$(python tools/tts_corpus.py --prefix_env B)"')
    a = p.parse_args()
    try:
        env = prefix_environment(a.prefix_env)
    except (FileNotFoundError, OSError) as exc:
        sys.exit(f"error: {exc}")
    for k, v in env.items():
        print(f"export {k}={shlex.quote(v)}")
