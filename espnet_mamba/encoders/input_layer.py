"""ESPnet's input layers (conv subsampling, linear) by name, with ESPnet's too-short check."""

from __future__ import annotations

import torch
from torch import nn

from espnet2.legacy.nets.pytorch_backend.transformer import subsampling as sub

# name -> (class, frames the class needs at least).  No positional encoding: Mamba layers
# carry position through their recurrence.
CONV_LAYERS = {
    "conv1d2": (sub.Conv1dSubsampling2, 5),
    "conv2d": (sub.Conv2dSubsampling, 7),
    "conv2d1": (sub.Conv2dSubsampling1, 5),
    "conv2d2": (sub.Conv2dSubsampling2, 7),
    "conv2d6": (sub.Conv2dSubsampling6, 11),
    "conv2d8": (sub.Conv2dSubsampling8, 15),
}
INPUT_LAYERS = (*CONV_LAYERS, "linear", None)


class InputLayer(nn.Module):
    """forward(xs (b, t, idim), masks (b, 1, t)) -> (xs (b, t', odim), masks (b, 1, t'))."""

    def __init__(self, name: str | None, input_size: int, output_size: int,
                 dropout_rate: float):
        super().__init__()
        if name not in INPUT_LAYERS:
            raise ValueError(f"unknown input_layer {name!r}; valid: {INPUT_LAYERS}")
        self.name, self.min_frames = name, 1
        if name in CONV_LAYERS:
            cls, self.min_frames = CONV_LAYERS[name]
            self.embed = cls(input_size, output_size, dropout_rate, pos_enc=nn.Identity())
        elif name == "linear":
            self.embed = nn.Sequential(nn.Linear(input_size, output_size),
                                       nn.LayerNorm(output_size), nn.Dropout(dropout_rate))
        else:
            if input_size != output_size:
                raise ValueError(f"input_layer=None needs input_size == output_size, got "
                                 f"{input_size} and {output_size}")
            self.embed = None

    def forward(self, xs, masks):
        if xs.shape[1] < self.min_frames:
            raise sub.TooShortUttError(
                f"has {xs.shape[1]} frames and is too short for subsampling "
                f"(input_layer={self.name} needs at least {self.min_frames} frames)",
                xs.shape[1], self.min_frames)
        if self.name in CONV_LAYERS:
            return self.embed(xs, masks)
        return (xs if self.embed is None else self.embed(xs)), masks


def check_features(xs: torch.Tensor) -> None:
    """Refuse NaN/inf features with a clear message instead of a NaN loss much later."""
    if not torch.isfinite(xs).all():
        raise ValueError("encoder input contains NaN or inf features; check the front-end "
                         "and the feature statistics (feats_stats.npz)")
