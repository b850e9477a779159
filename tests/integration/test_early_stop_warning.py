"""A hypothesis that ends far too early for its audio is named in the decoding log
(integration/early_stop.py): fewer than half the tokens of the CTC greedy path of the same
encoder output, and at least 10 fewer.

- the rule and the CTC path's length, on their own;
- ESPnet's BeamSearch and BatchBeamSearch (one utterance and a padded batch of two) with a
  decoder that ends every hypothesis at once and CTC weight 0: the warning names the utterance
  ids the inference data loader is iterating, and only the utterances that ended early;
- the stock ``python -m espnet2.bin.asr_inference`` (subprocess, the ``.pth`` hook) on the
  packed test model, a 13 s recording cut at 2 tokens by ``--maxlenratio -2``: its log names
  the recording and not the short utterance beside it.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from espnet_mamba.integration import early_stop

DATA = Path(__file__).resolve().parent.parent / "data" / "packed_compat"
VOCAB, EOS = 6, 5


@pytest.mark.parametrize("hyp, ctc, warned", [
    (4, 2000, True), (0, 10, True), (9, 20, True),  # the 20-minute case; short ones
    (10, 20, False),  # half: not "far too early"
    (0, 9, False), (5, 14, False),  # fewer than 10 tokens missing
    (30, 25, False),
])
def test_rule(hyp, ctc, warned):
    assert early_stop.ended_early(hyp, ctc) is warned


class PathCTC(torch.nn.Module):
    """A CTC whose greedy path is given: rows of token ids, one per frame (0 = blank)."""

    def __init__(self, paths):
        super().__init__()
        self.paths = torch.as_tensor(paths)

    def argmax(self, xs):
        return self.paths[:xs.shape[0], :xs.shape[1]]


def test_ctc_greedy_lengths_collapse_repeats_and_blanks_within_each_length():
    ctc = PathCTC([[1, 1, 0, 1, 2, 2, 0, 0, 3, 3], [2, 0, 2, 2, 0, 0, 0, 4, 4, 4]])
    x = torch.zeros(2, 10, 3)
    assert early_stop.ctc_greedy_lengths(ctc, x) == [4, 3]
    assert early_stop.ctc_greedy_lengths(ctc, x, torch.tensor([4, 0])) == [2, 0]
    assert early_stop.ctc_greedy_lengths(ctc, x[0]) == [4]


class EndsAtOnce(torch.nn.Module):
    """A decoder scorer that prefers <eos> from the first step."""

    def init_state(self, x):
        return None

    def batch_init_state(self, x, xs_lengths=None):
        return None

    def select_state(self, state, i, new_id=None):
        return None

    def score(self, ys, state, x):
        logp = torch.full((VOCAB,), -5.0)
        logp[EOS] = -0.01
        return logp, None

    def batch_score(self, ys, states, xs, xs_mask=None):
        return torch.stack([self.score(y, s, x)[0] for y, s, x in zip(ys, states, xs)]), states


def _search(cls, ctc):
    from espnet2.legacy.nets.batch_beam_search import BatchBeamSearch
    from espnet2.legacy.nets.beam_search import BeamSearch
    from espnet2.legacy.nets.scorer_interface import BatchScorerInterface
    from espnet2.legacy.nets.scorers.ctc import CTCPrefixScorer

    # ESPnet's interfaces are mixins of a plain class: add them to the stand-in decoder
    decoder = type("Decoder", (EndsAtOnce, BatchScorerInterface), {})()
    search = {"single": BeamSearch, "batch": BatchBeamSearch}[cls](
        scorers={"decoder": decoder, "ctc": CTCPrefixScorer(ctc, EOS)},
        weights={"decoder": 1.0, "ctc": 0.0}, beam_size=2, vocab_size=VOCAB, sos=EOS, eos=EOS)
    for module in (__import__("espnet2.legacy.nets.beam_search", fromlist=["_"]),
                   __import__("espnet2.legacy.nets.batch_beam_search", fromlist=["_"])):
        early_stop.patch(module)  # the import hook did this already; idempotent
    return search


def _keyed_loader(keys):
    """The ids as ESPnet's inference data loader yields them, through the recording class."""
    loader = torch.utils.data.DataLoader([0], batch_size=1,
                                         collate_fn=lambda items: (tuple(keys), {}))
    return early_stop._keyed(loader)


@pytest.mark.parametrize("cls", ["single", "batch"])
def test_search_names_the_utterance_that_ended_early(cls, caplog):
    frames = 40
    paths = [[1 + (t // 2) % 4 if t % 2 == 0 else 0 for t in range(frames)]]  # 20 tokens
    search = _search(cls, PathCTC(paths))
    x = torch.zeros(frames, 3)
    with caplog.at_level(logging.WARNING, logger=early_stop.__name__):
        for keys, _ in _keyed_loader(["utt-long"]):
            assert early_stop.current_keys() == ("utt-long",)
            nbest = search(x=x, maxlenratio=0.0, minlenratio=0.0)
    assert early_stop.current_keys() is None
    assert len(nbest[0].yseq) == 2  # <sos> <eos>: ended at once
    warned = [r.getMessage() for r in caplog.records if r.name == early_stop.__name__]
    assert warned == [early_stop.message("utt-long", 0, 20, frames)]
    assert warned[0].startswith("utterance utt-long: the hypothesis ends after 0 tokens, "
                                "while the CTC greedy path of the same encoder output has 20")


def test_batched_search_names_each_utterance_of_a_batch(caplog):
    frames = 40
    paths = [[1, 0] * 20, [1, 0] * 20]  # 20 tokens each over the whole tensor
    search = _search("batch", PathCTC(paths))
    x = torch.zeros(2, frames, 3)
    with caplog.at_level(logging.WARNING, logger=early_stop.__name__):
        for _ in _keyed_loader(["utt-a", "utt-b"]):
            nbests = search(x=x, maxlenratio=0.0, minlenratio=0.0,
                            x_lengths=torch.tensor([40, 12]))
    assert len(nbests) == 2
    warned = [r.getMessage() for r in caplog.records if r.name == early_stop.__name__]
    # utt-b has 12 frames: 6 CTC tokens, too few to call its empty hypothesis early
    assert warned == [early_stop.message("utt-a", 0, 20, 40)]


def test_no_ctc_no_check(caplog):
    search = _search("single", PathCTC([[1, 0] * 20]))
    search.__dict__[early_stop._CTC] = None  # a model without CTC
    with caplog.at_level(logging.WARNING, logger=early_stop.__name__):
        search(x=torch.zeros(40, 3), maxlenratio=0.0, minlenratio=0.0)
    assert not [r for r in caplog.records if r.name == early_stop.__name__]


def test_the_ctc_is_not_a_submodule_of_the_search():
    """The search only reads the model's CTC: it must not save or move it with itself."""
    search = _search("single", PathCTC([[1, 0] * 20]))
    assert isinstance(getattr(search, early_stop._CTC), PathCTC)
    assert not any(isinstance(m, PathCTC) for m in search.modules())


@pytest.mark.slow
def test_stock_asr_inference_log_names_the_recording(tmp_path):
    import soundfile

    from test_stock_clis import run_espnet

    with zipfile.ZipFile(DATA / "model.zip") as z:
        z.extractall(tmp_path)
    waves = [soundfile.read(str(DATA / f"{u}.wav")) for u in ("spk0-utt00", "spk1-utt01")]
    rate = waves[0][1]
    soundfile.write(str(tmp_path / "long.wav"),
                    np.concatenate([w for w, _ in waves] * 6), rate)  # 13.2 s
    shutil.copy(DATA / "spk0-utt00.wav", tmp_path / "short.wav")
    (tmp_path / "wav.scp").write_text(f"rec-long {tmp_path / 'long.wav'}\n"
                                      f"utt-short {tmp_path / 'short.wav'}\n")
    log = tmp_path / "asr_inference.log"
    code = run_espnet("asr_inference", [
        "--asr_train_config", "exp/asr/config.yaml", "--asr_model_file", "exp/asr/12epoch.pth",
        "--data_path_and_name_and_type", "wav.scp,speech,sound", "--output_dir", "out",
        "--ctc_weight", "0", "--beam_size", "3", "--maxlenratio", "-2"], tmp_path, log)
    text = log.read_text()
    assert code == 0, text[-3000:]
    warned = [line for line in text.splitlines() if "(early_stop:" in line]
    assert len(warned) == 1, text[-3000:]
    assert "utterance rec-long: the hypothesis ends after 2 tokens, while the CTC greedy " \
           "path of the same encoder output has " in warned[0]
    hyps = dict(line.split(maxsplit=1) for line in
                (tmp_path / "out" / "1best_recog" / "text").read_text().splitlines())
    assert set(hyps) == {"rec-long", "utt-short"} and len(hyps["rec-long"]) == 2
