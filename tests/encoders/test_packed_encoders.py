"""The encoders on packed variable-length batches (encoder option ``pack_sequences``): outputs
and gradients equal the padded batch's for every mixer path and input layer; the packed input
layer reads only its own utterance; batches the packed route cannot take run padded."""

import pytest
import torch

from model_checks import packed_vs_padded_error

# packed_mixer is a Mamba2 option: v1 mixers run a packed row padded whatever it says
MIXER_PATHS = [("mamba", "fused")] + [("mamba2", p) for p in ("fused", "unfused", "padded")]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("mixer,path", MIXER_PATHS)
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_packed_encoder_equals_padded(name, mixer, path, bidirectional):
    """Outputs and every gradient are the same with and without packing (PyTorch path, fp64),
    for every way a Mamba2 mixer can run a packed row (``packed_mixer``)."""
    assert packed_vs_padded_error(name, mixer, bidirectional=bidirectional,
                                  packed_mixer=path) < 1e-10


@pytest.mark.parametrize("input_layer",
                         ["conv2d2", "conv2d6", "conv2d8", "conv2d1", "conv1d2", "linear", None])
def test_packed_input_layers_equal_padded(input_layer):
    """Every input layer on the packed batch (encoders/input_layer.py ``packed``): the same
    output frames and lengths, outputs and gradients (fp64).  conv2d8 needs 15 frames: the
    9-frame utterance then has no output frame at all."""
    assert packed_vs_padded_error("samba_asr", "mamba2", input_layer=input_layer,
                                  idim=64 if input_layer is None else 20) < 1e-10


def test_packed_input_layer_reads_only_its_utterance():
    """Changing one utterance's frames (or the padding) changes no other utterance's packed
    input-layer output: the slots start at multiples of the stride."""
    from espnet_mamba.encoders.input_layer import InputLayer
    torch.manual_seed(0)
    layer = InputLayer("conv2d6", 20, 16, 0.0).double()
    x = torch.randn(3, 40, 20, dtype=torch.float64)
    il = torch.tensor([17, 40, 25])
    row, packing = layer.packed(x, il.tolist())
    assert packing.lengths.tolist() == [2, 5, 3]  # ((L - 3) // 2 + 1 - 5) // 3 + 1
    x2 = x.clone()
    x2[0] += 1.0
    x2[2, 25:] = 7.0  # padding
    row2, _ = layer.packed(x2, il.tolist())
    assert not torch.equal(row[0, :2], row2[0, :2])
    assert torch.equal(row[0, 2:], row2[0, 2:])


def test_input_layer_of_unknown_geometry_is_run_padded_then_packed(monkeypatch):
    """An input layer whose convolutions pad or dilate (none of ESPnet's today) has no packed
    geometry: ``packed`` runs it on the padded batch and packs its output, still exact."""
    from espnet_mamba.encoders.input_layer import InputLayer
    torch.manual_seed(0)
    layer = InputLayer("conv2d", 20, 16, 0.0).double()
    x = torch.randn(3, 40, 20, dtype=torch.float64)
    lengths = [17, 40, 25]
    row, packing = layer.packed(x, lengths)
    monkeypatch.setattr(layer, "time_convs", None)
    row_padded, packing_padded = layer.packed(x, lengths)
    assert packing_padded.lengths.tolist() == packing.lengths.tolist() == [3, 9, 5]
    assert torch.allclose(row_padded, row, rtol=0, atol=1e-12)


def test_packed_batch_with_no_frame_left_takes_the_padded_route():
    """Every utterance shorter than the subsampling's receptive field: ESPnet's zero lengths,
    as without packing (a packed row of no frames has nothing to run)."""
    from model_checks import ENCODERS, MIXER_CONF
    kw = dict(output_size=32, num_blocks=1, mixer="mamba2", d_state=16,
              mixer_conf=MIXER_CONF["mamba2"], dropout_rate=0.0)
    torch.manual_seed(0)
    padded = ENCODERS["samba_asr"](20, **kw)
    packed = ENCODERS["samba_asr"](20, pack_sequences=True, **kw)
    packed.load_state_dict(padded.state_dict())
    x, il = torch.randn(2, 10, 20), torch.tensor([5, 3])
    assert packed.embed.packed(x, [5, 3]) is None
    (y_a, len_a, _), (y_b, len_b, _) = padded(x, il), packed(x, il)
    assert len_a.tolist() == len_b.tolist() == [0, 0] and torch.equal(y_a, y_b)
