"""A tiny synthetic ASR data set for driving ESPnet's command-line tools (tests, recipe smoke runs).

Each character is a distinct tone (a fundamental plus two harmonics, spread over the mel scale), so
a character-level model can overfit a handful of utterances in a few CPU epochs.  Everything is
written with numpy + soundfile in Kaldi style, in the layout ESPnet's ``asr_train`` reads:

    <root>/wav/<utt>.wav                16 kHz, 16-bit PCM, mono
    <root>/data/<set>/wav.scp           "<utt> <abs path>"
    <root>/data/<set>/text              "<utt> <transcript>"
    <root>/data/<set>/utt2spk, spk2utt
    <root>/token_list.txt               <blank>, <unk>, characters, <sos/eos>

The ``train`` set lists every utterance ``repeat`` times (distinct utterance ids, same audio) so
that an epoch has several optimisation steps; ``valid`` (and ``test``) list each utterance once.

Usable as a script too: ``python tests/cli_data.py OUT_DIR``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

SAMPLE_RATE = 16000
# Short transcripts over a 5-character alphabet; every character in several contexts.
DEFAULT_TEXTS = ("abcd", "dcbae", "bda", "ecab")
CHAR_SECONDS = 0.16
GAP_SECONDS = 0.04
EDGE_SECONDS = 0.10


@dataclasses.dataclass
class CliDataset:
    root: Path
    utts: Dict[str, str]  # utterance id -> transcript
    sets: Dict[str, Path]  # "train"/"valid"/"test" -> Kaldi data directory
    token_list: Path
    tokens: List[str]
    sample_rate: int = SAMPLE_RATE

    def wav_scp(self, name: str) -> Path:
        return self.sets[name] / "wav.scp"

    def text(self, name: str) -> Path:
        return self.sets[name] / "text"


def char_frequencies(chars: Sequence[str], low: float = 250.0, high: float = 2500.0):
    """One fundamental per character, equally spaced on the mel scale."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def inv(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    mels = np.linspace(mel(low), mel(high), len(chars))
    return {c: float(inv(m)) for c, m in zip(chars, mels)}


def synthesize(text: str, freqs: Dict[str, float], rng: np.random.Generator,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Silence, then per character a tone with a raised-cosine envelope and a short gap."""
    n_char = int(CHAR_SECONDS * sample_rate)
    t = np.arange(n_char) / sample_rate
    env = np.sin(np.pi * np.arange(n_char) / n_char) ** 0.5
    pieces = [np.zeros(int(EDGE_SECONDS * sample_rate))]
    for c in text:
        f = freqs[c]
        tone = (np.sin(2 * np.pi * f * t) + 0.5 * np.sin(2 * np.pi * 2 * f * t)
                + 0.25 * np.sin(2 * np.pi * 3 * f * t))
        pieces += [0.25 * env * tone, np.zeros(int(GAP_SECONDS * sample_rate))]
    pieces.append(np.zeros(int(EDGE_SECONDS * sample_rate)))
    wav = np.concatenate(pieces)
    wav += 0.003 * rng.standard_normal(len(wav))
    return wav.astype(np.float32)


def write_token_list(path: Path, chars: Sequence[str]) -> List[str]:
    """ESPnet's char token list: <blank> first, <unk>, the characters, <sos/eos> last."""
    tokens = ["<blank>", "<unk>", *sorted(set(chars)), "<sos/eos>"]
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return tokens


def _write_kaldi_dir(d: Path, entries: List[tuple]) -> None:
    """entries: (utt id, wav path, transcript, speaker), written sorted by utterance id."""
    d.mkdir(parents=True, exist_ok=True)
    entries = sorted(entries)
    (d / "wav.scp").write_text("".join(f"{u} {w}\n" for u, w, _, _ in entries))
    (d / "text").write_text("".join(f"{u} {t}\n" for u, _, t, _ in entries), encoding="utf-8")
    (d / "utt2spk").write_text("".join(f"{u} {s}\n" for u, _, _, s in entries))
    spk2utt: Dict[str, List[str]] = {}
    for u, _, _, s in entries:
        spk2utt.setdefault(s, []).append(u)
    (d / "spk2utt").write_text("".join(f"{s} {' '.join(us)}\n"
                                       for s, us in sorted(spk2utt.items())))


def write_dataset(root, texts: Sequence[str] = DEFAULT_TEXTS, repeat: int = 4,
                  seed: int = 0, sample_rate: int = SAMPLE_RATE) -> CliDataset:
    """Write the wavs, the Kaldi data dirs (train/valid/test) and the char token list."""
    import soundfile

    root = Path(root).resolve()
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("".join(texts)))
    freqs = char_frequencies(chars)
    rng = np.random.default_rng(seed)

    utts: Dict[str, str] = {}
    base = []
    for i, text in enumerate(texts):
        utt = f"spk{i % 2}-utt{i:02d}"  # Kaldi convention: speaker id prefixes the utt id
        path = wav_dir / f"{utt}.wav"
        soundfile.write(str(path), synthesize(text, freqs, rng, sample_rate), sample_rate,
                        subtype="PCM_16")
        utts[utt] = text
        base.append((utt, str(path), text, f"spk{i % 2}"))

    train = [(f"{s}-rep{r}-{u.split('-', 1)[1]}", w, t, s)
             for r in range(repeat) for u, w, t, s in base]
    sets = {}
    for name, entries in (("train", train), ("valid", base), ("test", base)):
        sets[name] = root / "data" / name
        _write_kaldi_dir(sets[name], entries)

    token_list = root / "token_list.txt"
    tokens = write_token_list(token_list, chars)
    return CliDataset(root=root, utts=utts, sets=sets, token_list=token_list, tokens=tokens,
                      sample_rate=sample_rate)



def data_args(ds: CliDataset) -> list:
    """asr_train's --{train,valid}_data_path_and_name_and_type for a written data set."""
    args = []
    for split in ("train", "valid"):
        args += [f"--{split}_data_path_and_name_and_type", f"{ds.wav_scp(split)},speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{ds.text(split)},text,text"]
    return args


def train_args(ds: CliDataset, ngpu: int = 0) -> list:
    """The asr_train options every run on this data set needs (char tokens, no plots)."""
    return [
        "--use_preprocessor", "true", "--token_type", "char", "--token_list", ds.token_list,
        "--ngpu", str(ngpu), "--num_workers", "0", "--seed", "0",
        # tensorboard and matplotlib are not espnet dependencies; attention plots are noise here
        "--use_tensorboard", "false", "--use_matplotlib", "false", "--num_att_plot", "0",
        *data_args(ds),
    ]


def tiny_stats_args(output_dir: str = "exp/stats") -> list:
    """asr_train options of a statistics run (--collect_stats) for the data set's features: the
    statistics do not depend on the model, but ESPnet builds one, so a tiny samba_asr."""
    return ["--collect_stats", "true", "--batch_type", "unsorted", "--batch_size", "4",
            "--encoder", "samba_asr", "--encoder_conf", "output_size=16",
            "--encoder_conf", "num_blocks=1", "--model_conf", "ctc_weight=1.0",
            "--output_dir", output_dir]


def shape_args(stats_dir: str = "exp/stats") -> list:
    """asr_train options that read the shape files of a statistics run (tiny_stats_args) and
    fold batches of this data set's lengths."""
    return [*(a for split in ("train", "valid") for kind in ("speech", "text")
              for a in (f"--{split}_shape_file", f"{stats_dir}/{split}/{kind}_shape")),
            "--fold_length", "80000", "--fold_length", "150"]


if __name__ == "__main__":
    ds = write_dataset(sys.argv[1] if len(sys.argv) > 1 else "cli_data")
    print(ds.root)
