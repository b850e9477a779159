"""Bidirectional mixer: one mixer reads the sequence forwards, a second one backwards.

The backward mixer reads each utterance reversed within its own length (not the padded tensor),
so an utterance gives the same output alone and inside a padded batch.  The two outputs are
summed (the residual stream keeps its width).
"""

from __future__ import annotations

from torch import nn

from espnet_mamba.modules.padding import reverse_padded


class Bidirectional(nn.Module):
    def __init__(self, forward_mixer: nn.Module, backward_mixer: nn.Module):
        super().__init__()
        self.forward_mixer = forward_mixer
        self.backward_mixer = backward_mixer

    def forward(self, x, lengths=None, packing=None):
        if packing is not None:  # x: (1, total, d), utterances end to end
            y = self.forward_mixer(x, packing=packing)
            x_rev = packing.reverse(x)
            return y + packing.reverse(self.backward_mixer(x_rev, packing=packing))
        y = self.forward_mixer(x, lengths)
        x_rev = reverse_padded(x, lengths)
        return y + reverse_padded(self.backward_mixer(x_rev, lengths), lengths)
