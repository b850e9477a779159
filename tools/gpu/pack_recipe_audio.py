"""The mini recipe's train and dev sets, packed small for a GPU machine without network.

A machine without the TTS engines cannot synthesise egs2/mini_synth's corpus, and the 16-bit
train + dev audio is 116 MB (FLAC: ~66 MB), too much to bring along easily.  Opus at
libsndfile's default bit rate is ~12 % of it, so the sets travel as Opus and are decoded back to
16-bit WAV of the same length on the GPU machine.  Lossy, but the recipe's GPU run measures seconds
per epoch, which depend on the utterances' lengths (kept exactly: checked on unpacking), not on
their samples.

    where the corpus is:  python tools/gpu/pack_recipe_audio.py pack .gpu/recipe/mini_synth.tar
                          (after egs2/mini_synth/asr1/run.sh --stop_stage 1), then copy .gpu/
    GPU machine:          python tools/gpu/pack_recipe_audio.py unpack .gpu/recipe/mini_synth.tar
                          (tools/gpu/mini_synth_epochs.sh does it when the TTS engines are missing)

The archive holds dump/raw/<set>/ (wav.scp with paths relative to the recipe directory) and
one .ogg per utterance; ``unpack`` writes corpus/wav/<set>/<utt>.wav and dump/raw/<set>/ with
absolute paths, as stage 1 would; a set whose dump/raw/<set>/wav.scp exists is left alone (the
synthesised corpus is never overwritten by its lossy copy).
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from pathlib import Path

import soundfile as sf

RECIPE = Path(__file__).resolve().parents[2] / "egs2" / "mini_synth" / "asr1"
SETS = ("train", "dev")
META = ("text", "utt2spk", "spk2utt", "utt2dur", "feats_type")


def read_scp(path: Path) -> list:
    rows = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    bad = [r for r in rows if len(r) != 2]
    if bad:
        raise ValueError(f"{path}: malformed line {' '.join(bad[0])!r} (want 'utt path')")
    return rows


def _add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(archive: Path, recipe: Path = RECIPE, sets=SETS) -> dict:
    counts = {}
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(archive.suffix + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for dset in sets:
            src = recipe / "dump" / "raw" / dset
            if not (src / "wav.scp").is_file():
                raise FileNotFoundError(f"{src}/wav.scp: run egs2/mini_synth/asr1/run.sh "
                                        "--stop_stage 1 first")
            scp = []
            for utt, wav in read_scp(src / "wav.scp"):
                x, sr = sf.read(wav, dtype="float32")
                buf = io.BytesIO()
                sf.write(buf, x, sr, format="OGG", subtype="OPUS")
                _add(tar, f"opus/{dset}/{utt}.ogg", buf.getvalue())
                scp.append(f"{utt} corpus/wav/{dset}/{utt}.wav {len(x)} {sr}\n")
            _add(tar, f"dump/raw/{dset}/wav.scp", "".join(scp).encode())
            for name in META:
                _add(tar, f"dump/raw/{dset}/{name}", (src / name).read_bytes())
            counts[dset] = len(scp)
    tmp.replace(archive)
    return counts


def unpack(archive: Path, recipe: Path = RECIPE) -> dict:
    counts = {}
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        sets = sorted({n.split("/")[2] for n in members if n.startswith("dump/raw/")})
        for dset in sets:
            dump = recipe / "dump" / "raw" / dset
            wav_dir = recipe / "corpus" / "wav" / dset
            if (dump / "wav.scp").exists():
                # never over the synthesised corpus (or a set unpacked by an earlier call)
                print(f"{dump}/wav.scp exists: {dset} left as it is")
                counts[dset] = len(read_scp(dump / "wav.scp"))
                continue
            dump.mkdir(parents=True, exist_ok=True)
            wav_dir.mkdir(parents=True, exist_ok=True)
            scp = []
            listing = tar.extractfile(members[f"dump/raw/{dset}/wav.scp"]).read().decode()
            for line in listing.splitlines():
                utt, rel, n, sr = line.split()
                ogg = tar.extractfile(members[f"opus/{dset}/{utt}.ogg"]).read()
                x, got_sr = sf.read(io.BytesIO(ogg), dtype="int16")
                if len(x) != int(n) or got_sr != int(sr):
                    raise ValueError(f"{utt}: {len(x)} samples at {got_sr} Hz after Opus, "
                                     f"{n} at {sr} Hz packed: the lengths would change")
                sf.write(recipe / rel, x, got_sr, subtype="PCM_16")
                scp.append(f"{utt} {(recipe / rel).resolve()}\n")
            (dump / "wav.scp").write_text("".join(scp))
            for name in META:
                member = members[f"dump/raw/{dset}/{name}"]
                (dump / name).write_bytes(tar.extractfile(member).read())
            counts[dset] = len(scp)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("pack", "unpack"))
    p.add_argument("archive", type=Path)
    p.add_argument("--recipe", type=Path, default=RECIPE, help="the recipe directory")
    args = p.parse_args(argv)
    if args.action == "unpack" and not args.archive.is_file():
        sys.exit(f"no {args.archive}: make it with 'pack' where the corpus is, and copy it here")
    counts = (pack if args.action == "pack" else unpack)(args.archive, args.recipe)
    size = args.archive.stat().st_size / 2**20
    print(f"{args.action}: {counts} utterances, {args.archive} {size:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
