"""The input layer's ``recompute`` (encoder option ``recompute_input_layer``): the same outputs
and gradients as keeping the activations, with less kept for the backward pass."""

import pytest
import torch

from espnet_mamba.encoders.input_layer import CONV_LAYERS, InputLayer, RecomputedConvs
from model_checks import ENCODERS, variant_error


@pytest.mark.parametrize("input_layer", list(CONV_LAYERS))
def test_recomputed_input_layer_equals_kept(input_layer):
    """fp64, training mode: outputs and every parameter's gradient, weights loaded strictly
    from the encoder without the option (a checkpoint trained either way loads)."""
    assert variant_error("samba_asr", "mamba2", {"recompute_input_layer": True},
                         input_layer=input_layer) < 1e-12


@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_encoders_pass_the_option_to_their_input_layer(name):
    on = ENCODERS[name](20, output_size=32, num_blocks=1, recompute_input_layer=True)
    off = ENCODERS[name](20, output_size=32, num_blocks=1)
    assert isinstance(on.embed.embed.conv, RecomputedConvs)
    assert not isinstance(off.embed.embed.conv, RecomputedConvs)


def test_recomputed_input_layer_packed_equals_padded():
    assert variant_error("speech_mamba", "mamba2",
                         {"recompute_input_layer": True, "pack_sequences": True}) < 1e-10


def _saved_bytes(layer, xs):
    """Bytes of the distinct storages autograd keeps for the backward pass of ``layer``, the
    input's own storage left out."""
    kept = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() != xs.untyped_storage().data_ptr():
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(xs, None)[0]
    return sum(kept.values()), out


def test_recomputed_input_layer_keeps_less_for_backward():
    """conv2d keeps the first convolution's output (odim x frames/2 x idim/2) for the second's
    backward; recomputed, only what follows the convolutions is kept."""
    torch.manual_seed(0)
    kept = InputLayer("conv2d", 80, 64, 0.0)
    recomputed = InputLayer("conv2d", 80, 64, 0.0, recompute=True)
    recomputed.load_state_dict(kept.state_dict())
    xs = torch.randn(1, 400, 80)
    first_conv_out = 64 * 199 * 39 * xs.element_size()
    kept_bytes, y_kept = _saved_bytes(kept, xs)
    recomputed_bytes, y_recomputed = _saved_bytes(recomputed, xs)
    assert kept_bytes >= recomputed_bytes + first_conv_out
    assert recomputed_bytes > 0  # the output linear's input is still kept
    torch.testing.assert_close(y_recomputed, y_kept, rtol=0, atol=0)
    y_recomputed.square().sum().backward()
    y_kept.square().sum().backward()
    for (name, a), b in zip(recomputed.named_parameters(), kept.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_recomputed_input_layer_without_gradients_runs_plainly(monkeypatch):
    """Inference (no_grad) or frozen weights on a feature input: nothing to recompute, so no
    checkpoint is set up."""
    layer = InputLayer("conv2d", 80, 32, 0.0, recompute=True)
    assert isinstance(layer.embed.conv, RecomputedConvs)
    calls = []
    def counted(fn, *args, **kwargs):
        calls.append(1)
        return fn(*args)

    monkeypatch.setattr("espnet_mamba.encoders.input_layer.checkpoint", counted)
    with torch.no_grad():
        layer(torch.randn(1, 50, 80), None)
    layer.requires_grad_(False)
    layer(torch.randn(1, 50, 80), None)
    assert calls == []
    # frozen weights, but a trainable front-end before it: its gradient needs the backward pass
    layer(torch.randn(1, 50, 80, requires_grad=True), None)
    assert calls == [1]


@pytest.mark.parametrize("input_layer", ["linear", None])
def test_recompute_without_a_conv_input_layer_is_refused(input_layer):
    with pytest.raises(ValueError, match="recompute_input_layer.*conv subsampling.*got "
                                         f"input_layer: {input_layer or 'null'}"):
        ENCODERS["samba_asr"](32, output_size=32, num_blocks=1, input_layer=input_layer,
                              recompute_input_layer=True)
