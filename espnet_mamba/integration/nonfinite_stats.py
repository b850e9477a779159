"""Feature statistics that stay finite when an utterance holds NaN/inf samples.

ESPnet's ``asr_train --collect_stats true`` (asr.sh stage 10) sums every utterance's features
into ``feats_stats.npz``; one utterance with a NaN sample makes the whole sum NaN, the job still
exits 0 with no warning, and the global-MVN normalisation of every later training and decoding
step is NaN.  :func:`patch` wraps ``collect_stats`` as ESPnet's ``main_worker`` calls it so that
each batch is checked before ESPnet sees it: an utterance whose input (a floating tensor of the
batch: ``speech``...) is not finite is named in the log (utterance id, data name, train/valid)
and left out of that batch.  It is then in neither the statistics nor the shape files
(``speech_shape``, ``text_shape``), so the training stage, which draws its utterances from the
shape files, never draws it either.  Batches with only finite values pass unchanged, so the
statistics of clean data are what stock ESPnet writes.  One check per batch on the host
(collect_stats runs once, before training).
"""

from __future__ import annotations

import logging

import torch

from espnet_mamba.integration.patching import wrap_method

logger = logging.getLogger(__name__)


def nonfinite_rows(keys, batch: dict) -> dict[int, list[str]]:
    """{row: [names of the batch's floating tensors that are not finite in that row]}."""
    bad: dict[int, list[str]] = {}
    for name, value in batch.items():
        if (name.endswith("_lengths") or not isinstance(value, torch.Tensor)
                or not value.is_floating_point() or value.dim() == 0
                or value.shape[0] != len(keys)):
            continue
        finite = torch.isfinite(value).flatten(1).all(1) if value.dim() > 1 else torch.isfinite(
            value)
        for row in (~finite).nonzero().flatten().tolist():
            bad.setdefault(row, []).append(name)
    return bad


def _keep(keys, batch: dict, rows: list[int]):
    index = torch.tensor(rows, dtype=torch.long)
    kept = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == len(keys):
            value = value.index_select(0, index.to(value.device))
        kept[name] = value
    return [keys[i] for i in rows], kept


class FiniteBatches:
    """An iterable of ``(keys, batch)`` without the utterances whose values are not finite;
    ``skipped`` lists their ids.  ``len()`` is the wrapped iterator's (ESPnet uses it for its
    log interval only)."""

    def __init__(self, batches, mode: str):
        self.batches, self.mode, self.skipped = batches, mode, []

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for keys, batch in self.batches:
            bad = nonfinite_rows(keys, batch)
            if bad:
                for row, names in sorted(bad.items()):
                    logger.warning(
                        "utterance %s (%s set): non-finite values (NaN/inf) in %s; left out of "
                        "the feature statistics and the shape files (training will not draw "
                        "it); check its audio file", keys[row], self.mode, ", ".join(names))
                    self.skipped.append(keys[row])
                rows = [i for i in range(len(keys)) if i not in bad]
                if not rows:
                    continue
                keys, batch = _keep(keys, batch, rows)
            yield keys, batch


def _skipping_nonfinite(original):
    def collect_stats(*args, **kwargs):
        iterators = []
        for index, (name, mode) in enumerate((("train_iter", "train"), ("valid_iter", "valid"))):
            if name in kwargs:
                kwargs[name] = FiniteBatches(kwargs[name], mode)
                iterators.append(kwargs[name])
            elif len(args) > index + 1:  # (model, train_iter, valid_iter, ...)
                args = (*args[:index + 1], FiniteBatches(args[index + 1], mode),
                        *args[index + 2:])
                iterators.append(args[index + 1])
        result = original(*args, **kwargs)
        skipped = [key for it in iterators for key in it.skipped]
        if skipped:
            logger.warning("%d utterance(s) with non-finite values (NaN/inf) left out of the "
                           "statistics and shape files: %s", len(skipped), skipped)
        return result

    return collect_stats


def patch(abs_task_module) -> bool:
    """Wrap ``abs_task_module.collect_stats``, the name ``AbsTask.main_worker`` calls
    (idempotent).  Returns True if wrapped."""
    return hasattr(abs_task_module, "collect_stats") and wrap_method(
        abs_task_module, "collect_stats", _skipping_nonfinite, "_espnet_mamba_finite_stats")
