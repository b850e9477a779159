#!/usr/bin/env python3
"""Kaldi data directories from the LibriSpeech parts on disk (local/data.sh runs this).

    python3 local/prepare_librispeech.py --corpus DIR --parts dev-clean,train-clean-100,... \\
        --combine train_960=train-clean-100,train-clean-360,train-other-500 \\
        --combine dev=dev-clean,dev-other [--out data]

DIR holds the parts as LibriSpeech ships them: <part>/<reader>/<chapter>/ with
<reader>-<chapter>-<n>.flac files and the transcripts <reader>-<chapter>.trans.txt.
For each part of --parts present, writes <out>/<part with "_" for "-"> (wav.scp with the flac
paths, text, utt2spk, spk2utt; the speaker is <reader>-<chapter>, as in ESPnet's recipe).
Parts that are absent are listed, not an error.  Each --combine NAME=PARTS writes <out>/NAME from
the parts of PARTS that are present and names the missing ones; it is an error when none is (for
a single part equal to NAME, that part's directory is the set).  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

FILES = ("wav.scp", "text", "utt2spk")


class CorpusError(Exception):
    pass


def set_name(part: str) -> str:
    return part.replace("-", "_")


def read_part(part_dir: Path) -> dict[str, tuple[str, str, str]]:
    """{utt: (flac path, transcript, speaker)} of one part; errors name the file at fault."""
    rows: dict[str, tuple[str, str, str]] = {}
    for reader_dir in sorted(part_dir.iterdir()):
        if not reader_dir.is_dir():
            continue
        if not reader_dir.name.isdigit():
            raise CorpusError(f"{reader_dir}: expected a reader directory (a number)")
        for chapter_dir in sorted(reader_dir.iterdir()):
            if not chapter_dir.is_dir():
                continue
            if not chapter_dir.name.isdigit():
                raise CorpusError(f"{chapter_dir}: expected a chapter directory (a number)")
            spk = f"{reader_dir.name}-{chapter_dir.name}"
            trans = chapter_dir / f"{spk}.trans.txt"
            if not trans.is_file():
                raise CorpusError(f"{trans}: transcript file missing")
            texts = {}
            for n, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
                utt, _, words = line.strip().partition(" ")
                if not utt:
                    continue
                if not utt.startswith(spk + "-") or not words.strip():
                    raise CorpusError(f"{trans}:{n}: expected '{spk}-<n> WORDS', got {line!r}")
                texts[utt] = " ".join(words.split())
            flacs = {p.name[: -len(".flac")]: p for p in chapter_dir.glob("*.flac")}
            if missing := sorted(set(texts) - set(flacs)):
                raise CorpusError(f"{trans}: no audio file for {missing[0]} "
                                  f"({chapter_dir / (missing[0] + '.flac')} is missing)")
            if untranscribed := sorted(set(flacs) - set(texts)):
                raise CorpusError(f"{flacs[untranscribed[0]]}: no transcript in {trans}")
            for utt, words in texts.items():
                rows[utt] = (str(flacs[utt].resolve()), words, spk)
    if not rows:
        raise CorpusError(f"{part_dir}: no utterances (expected <reader>/<chapter>/*.flac)")
    return rows


def write_set(out: Path, rows: dict[str, tuple[str, str, str]]) -> None:
    """Kaldi order: every file sorted by utterance id as `LC_ALL=C sort` does (byte order)."""
    out.mkdir(parents=True, exist_ok=True)
    utts = sorted(rows, key=lambda u: u.encode())
    with open(out / "wav.scp", "w") as f:
        f.writelines(f"{u} {rows[u][0]}\n" for u in utts)
    with open(out / "text", "w", encoding="utf-8") as f:
        f.writelines(f"{u} {rows[u][1]}\n" for u in utts)
    with open(out / "utt2spk", "w") as f:
        f.writelines(f"{u} {rows[u][2]}\n" for u in utts)
    spk2utt = defaultdict(list)
    for u in utts:
        spk2utt[rows[u][2]].append(u)
    with open(out / "spk2utt", "w") as f:
        f.writelines(f"{s} {' '.join(spk2utt[s])}\n" for s in sorted(spk2utt, key=str.encode))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, required=True,
                   help="directory that holds the parts (.../LibriSpeech)")
    p.add_argument("--parts", required=True, help="comma-separated parts to prepare if present")
    p.add_argument("--combine", action="append", default=[], metavar="NAME=PART,PART",
                   help="a set made of the parts present among PARTS (repeatable)")
    p.add_argument("--out", type=Path, default=Path("data"))
    args = p.parse_args(argv)

    def log(msg):
        print(f"prepare_librispeech.py: {msg}", file=sys.stderr, flush=True)

    try:
        if not args.corpus.is_dir():
            raise CorpusError(f"{args.corpus}: no such directory")
        if any(c.isspace() for c in str(args.corpus.resolve())):
            raise CorpusError(f"{args.corpus.resolve()}: the path has white space, which "
                              "Kaldi's wav.scp cannot hold (link the corpus to another path)")
        parts = [x for x in args.parts.split(",") if x]
        present = [x for x in parts if (args.corpus / x).is_dir()]
        if not present:
            where = [args.corpus / parts[0]]
            if args.corpus.name != "LibriSpeech":
                where.insert(0, args.corpus / "LibriSpeech" / parts[0])
            raise CorpusError(f"{args.corpus}: none of the LibriSpeech parts {', '.join(parts)} "
                              "is there (expected e.g. "
                              + " or ".join(f"{w}/<reader>/<chapter>/*.flac" for w in where) + ")")
        if missing := [x for x in parts if x not in present]:
            log(f"not in {args.corpus}, skipped: {', '.join(missing)}")
        data = {}
        for part in present:
            data[part] = read_part(args.corpus / part)
            write_set(args.out / set_name(part), data[part])
            log(f"{args.out / set_name(part)}: {len(data[part])} utterances from "
                f"{args.corpus / part}")
        for spec in args.combine:
            name, _, members = spec.partition("=")
            members = [x for x in members.split(",") if x]
            have = [x for x in members if x in data]
            if not have:
                raise CorpusError(f"{args.corpus}: {name} needs at least one of "
                                  f"{', '.join(members)}; none is there")
            if [set_name(x) for x in have] == [name]:
                continue  # that part's directory is the set
            rows = {}
            for x in have:
                rows.update(data[x])
            write_set(args.out / name, rows)
            lacking = [x for x in members if x not in data]
            log(f"{args.out / name}: {len(rows)} utterances of {', '.join(have)}"
                + (f" (missing: {', '.join(lacking)})" if lacking else ""))
    except CorpusError as e:
        print(f"prepare_librispeech.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
