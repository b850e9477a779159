"""The encoders' ``cuda_graphs`` option (graphs/training.py) on the GPU: training steps
with the layers replayed from CUDA graphs == the eager steps (outputs and every parameter's
gradient) over three steps of one length bucket (capture at the second, replay on new inputs
and lengths at the third; 3 rows padded to 4), in fp32 and under bf16 autocast with its weight
cache on (as in ESPnet's trainer), with the triton add+RMSNorm the full sizes use; accumulated
gradients; with dropout, replays draw new masks; two graphs in one pool replayed in turn;
packed rows (``pack_sequences``) replayed from one graph per packed-length bucket; the input
layer recomputed (``recompute_input_layer``) before the graphed layers."""

import pytest
import torch

from espnet_mamba.modules.execution import set_execution
from tensor_checks import projection_loss
from model_checks import ENCODERS, MIXER_CONF

pytestmark = pytest.mark.gpu


# fp32: lengths padded to buckets of 16 frames and 3 rows to 4 (exact: invariant 2).  Under bf16
# a padded shape changes the GEMMs' rounding (~0.5 % of the output), so the bf16 cases compare
# unpadded shapes.
BUCKETS = {"frame_step": 16, "batch_step": 2}
UNPADDED = {"frame_step": 1, "batch_step": 1}


def build(name, mixer="mamba", graphs=False, dropout_rate=0.0, conf=BUCKETS, **options):
    torch.manual_seed(0)
    return ENCODERS[name](20, output_size=64, num_blocks=2, mixer=mixer, d_state=16,
                          mixer_conf=MIXER_CONF[mixer], dropout_rate=dropout_rate,
                          cuda_graphs=graphs, cuda_graph_conf=conf, **options).cuda().train()


def assert_grads_close(test, ref, tol):
    """Each gradient within tol of its own size plus 1e-5 of the largest one (the key biases'
    gradients are 0 up to rounding)."""
    floor = 1e-5 * max(g.abs().max() for g in ref.values())
    for n, g in ref.items():
        assert (test[n] - g).abs().max() <= tol * g.abs().max() + floor, n


def train_step(enc, x, ilens, amp):
    enc.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        y, olens, _ = enc(x, ilens)
    mask = (torch.arange(y.shape[1], device="cuda")[None] < olens[:, None])[..., None]
    projection_loss(y.float() * mask).backward()
    grads = {n: p.grad.detach().clone() for n, p in enc.named_parameters()}
    return (y.detach().float() * mask), olens, grads


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("mixer", sorted(MIXER_CONF))
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_graphed_training_step_equals_eager_cuda(name, mixer, amp):
    eager = build(name, mixer)
    graphed = build(name, mixer, graphs=True, conf=UNPADDED if amp else BUCKETS)
    for enc in (eager, graphed):  # the triton norm at every size, as at full size
        set_execution(enc, norm_kernel_min_numel=0)
    tol = 2e-2 if amp else 1e-4
    # 120 and 110 frames -> 29 and 26 subsampled: in fp32 one bucket of 32 frames, and
    # batch_step 2 adds a one-frame row to the 3 utterances; in bf16 the third step runs eagerly
    # (a new shape, seen once)
    for frames, lengths in ((120, [120, 97, 60]), (120, [120, 61, 33]), (110, [110, 80, 41])):
        x = torch.randn(3, frames, 20, device="cuda")
        ilens = torch.tensor(lengths, device="cuda")
        y_e, len_e, g_e = train_step(eager, x, ilens, amp)
        y_g, len_g, g_g = train_step(graphed, x, ilens, amp)
        assert torch.equal(len_e, len_g)
        assert (y_g - y_e).abs().max() <= tol * y_e.abs().max()
        assert_grads_close(g_g, g_e, tol)
    graphs = graphed.training_graphs
    assert graphs.captures == 1 and len(graphs.graphs) == 1 and graphs.capture_error is None


def test_accumulated_gradients_cuda():
    """accum_grad 2 after a replayed step: the same gradients as eagerly, both micro-batches
    replaying the graph (the first one's gradients copied out of the graph's buffers before
    the second replay)."""
    eager, graphed = build("samba_asr"), build("samba_asr", graphs=True)
    x = torch.randn(2, 120, 20, device="cuda")
    ilens = torch.tensor([120, 90], device="cuda")
    for _ in range(2):
        train_step(graphed, x, ilens, amp=False)
    assert graphed.training_graphs.captures == 1
    for enc in (eager, graphed):
        enc.zero_grad(set_to_none=True)
        for scale in (1.0, 2.0):
            y, olens, _ = enc(x * scale, ilens)
            mask = (torch.arange(y.shape[1], device="cuda")[None] < olens[:, None])[..., None]
            projection_loss(y * mask).backward()
    assert_grads_close({n: p.grad for n, p in graphed.named_parameters()},
                       {n: p.grad for n, p in eager.named_parameters()}, 1e-4)
    graphs = graphed.training_graphs
    assert graphs.captures == 1 and graphs.grad_copies == 1


def test_graphed_training_step_with_dropout_cuda():
    """Dropout inside the graph (torch's and the triton add+RMSNorm's): finite outputs and
    gradients, and a new mask on every replay."""
    enc = build("samba_asr", graphs=True, dropout_rate=0.1)
    x = torch.randn(2, 120, 20, device="cuda")
    ilens = torch.tensor([120, 90], device="cuda")
    outs = []
    for _ in range(4):
        y, _, grads = train_step(enc, x, ilens, amp=True)
        assert y.isfinite().all() and all(g.isfinite().all() for g in grads.values())
        outs.append(y)
    assert enc.training_graphs.captures == 1 and enc.training_graphs.capture_error is None
    assert not torch.equal(outs[2], outs[3])


def test_capture_while_the_previous_steps_graph_is_alive_cuda():
    """A caller keeps each step's output, so the eager step's graph (holding the parameters'
    gradient accumulators, made on the default stream) is alive during the capture: the
    capture differentiates stand-ins of the parameters and succeeds.  Given the parameters
    themselves it failed in every process ("operation would make the legacy stream depend on
    a capturing blocking stream"; tools/gpu/repeat_captures.py)."""
    enc = build("samba_asr", graphs=True, dropout_rate=0.1)
    x = torch.randn(2, 120, 20, device="cuda")
    ilens = torch.tensor([120, 90], device="cuda")
    kept = []
    for _ in range(4):
        enc.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _, _ = enc(x, ilens)
        y.float().square().mean().backward()
        kept.append(y)
    assert enc.training_graphs.captures == 1 and enc.training_graphs.capture_error is None
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(g.isfinite().all() for g in grads)


def test_shapes_in_turn_share_the_memory_pool_cuda():
    """Two graphs (two length buckets) in one memory pool, replayed in turn (fp32): every
    step == eager; an output kept from an earlier step is not overwritten by later replays; two
    passes before one backward (the second runs eagerly) == eager."""
    eager, graphed = build("speech_mamba"), build("speech_mamba", graphs=True)
    kept = []
    for frames in (120, 240, 120, 240, 120, 240, 110, 230):
        x = torch.randn(2, frames, 20, device="cuda")
        ilens = torch.tensor([frames, frames // 2], device="cuda")
        y_e, _, g_e = train_step(eager, x, ilens, amp=False)
        y_g, _, g_g = train_step(graphed, x, ilens, amp=False)
        assert (y_g - y_e).abs().max() <= 1e-4 * y_e.abs().max()
        assert_grads_close(g_g, g_e, 1e-4)
        graphed.zero_grad(set_to_none=True)
        out = graphed(x, ilens)[0]  # a replay from its second sighting (then dropped)
        kept.append((out.detach(), out.detach().clone()))
        del out
    assert graphed.training_graphs.captures == 2
    assert all(torch.equal(a, b) for a, b in kept)
    x = torch.randn(2, 120, 20, device="cuda")
    ilens = torch.tensor([120, 77], device="cuda")
    for enc in (eager, graphed):
        enc.zero_grad(set_to_none=True)
        (y1, olens, _), (y2, _, _) = enc(x, ilens), enc(x.flip(1), ilens)
        mask = (torch.arange(y1.shape[1], device="cuda")[None] < olens[:, None])[..., None]
        (projection_loss(y1 * mask) + 2 * projection_loss(y2 * mask)).backward()
    assert_grads_close({n: p.grad for n, p in graphed.named_parameters()},
                       {n: p.grad for n, p in eager.named_parameters()}, 1e-4)


def test_a_failed_capture_restores_the_generator_cuda(monkeypatch, caplog):
    """A capture that fails (here: a host sync inside it, as a data-dependent branch would do)
    leaves CUDA's generator in capture mode; restore_rng takes it out, the graphs are off from
    then on, random ops work again (dropout, torch.randn) and the steps == eager."""
    from espnet_mamba.encoders import stack

    forward = stack._Layers.forward

    def syncs_when_capturing(self, xs, lengths, valid):
        if torch.cuda.is_current_stream_capturing():
            xs.sum().item()  # not allowed in a capture: invalidates it
        return forward(self, xs, lengths, valid)

    monkeypatch.setattr(stack._Layers, "forward", syncs_when_capturing)
    eager, graphed = build("samba_asr"), build("samba_asr", graphs=True)
    x = torch.randn(2, 120, 20, device="cuda")
    ilens = torch.tensor([120, 90], device="cuda")
    for _ in range(3):  # the second step tries the capture
        y_e, _, g_e = train_step(eager, x, ilens, amp=False)
        y_g, _, g_g = train_step(graphed, x, ilens, amp=False)
        assert (y_g - y_e).abs().max() <= 1e-4 * y_e.abs().max()
        assert_grads_close(g_g, g_e, 1e-4)
    graphs = graphed.training_graphs
    assert graphs.captures == 0 and graphs.capture_error and "failed" in graphs.disabled
    assert torch.randn(4, device="cuda").isfinite().all()
    kept = torch.nn.functional.dropout(torch.ones(4096, device="cuda"), 0.5)
    assert 0 < (kept == 0).sum() < 4096


@pytest.mark.parametrize("bidirectional", [True, False])
def test_packed_rows_replay_one_graph_cuda(bidirectional):
    """pack_sequences + cuda_graphs (Mamba2 mixers, the seq_idx kernels): batches of other
    sizes whose packed rows fall in one bucket replay one graph; every step == the padded
    encoder run eagerly (fp32)."""
    kw = dict(output_size=64, num_blocks=2, mixer="mamba2", d_state=16, dropout_rate=0.0,
              mixer_conf=MIXER_CONF["mamba2"], bidirectional=bidirectional)
    torch.manual_seed(0)
    eager = ENCODERS["samba_asr"](20, **kw).cuda().train()
    graphed = ENCODERS["samba_asr"](20, pack_sequences=True, cuda_graphs=True,
                                    cuda_graph_conf={"frame_step": 64}, **kw).cuda().train()
    graphed.load_state_dict(eager.state_dict())
    # subsampled 29 + 23 + 14 = 66, 29 + 29 + 14 = 72 and 29 + 26 + 21 = 76 frames: one bucket
    # of 128 (captured at the second batch, replayed at the third)
    for lengths in ([120, 97, 60], [120, 120, 60], [120, 110, 90]):
        x = torch.randn(len(lengths), max(lengths), 20, device="cuda")
        ilens = torch.tensor(lengths, device="cuda")
        y_e, len_e, g_e = train_step(eager, x, ilens, amp=False)
        y_g, len_g, g_g = train_step(graphed, x, ilens, amp=False)
        assert torch.equal(len_e, len_g)
        assert (y_g - y_e).abs().max() <= 1e-4 * y_e.abs().max()
        assert_grads_close(g_g, g_e, 1e-4)
    graphs = graphed.training_graphs
    assert graphs.captures == 1 and graphs.capture_error is None
    assert [key[:2] for key in graphs.graphs] == [(128, 1)]


@pytest.mark.parametrize("amp", [False, True])
def test_recomputed_input_layer_before_graphed_layers_cuda(amp):
    """recompute_input_layer on CUDA (cuDNN convolutions run again in the backward pass, under
    autocast as in training) in front of graphed layers: the outputs and gradients of the
    encoder that keeps the activations, over three steps (capture at the second)."""
    kept = build("speech_mamba", "mamba2", graphs=True, conf=UNPADDED)
    recomputed = build("speech_mamba", "mamba2", graphs=True, conf=UNPADDED,
                       recompute_input_layer=True)
    tol = 1e-3 if amp else 1e-5
    for _ in range(3):
        x = torch.randn(3, 120, 20, device="cuda")
        ilens = torch.tensor([120, 97, 60], device="cuda")
        y_k, len_k, g_k = train_step(kept, x, ilens, amp)
        y_r, len_r, g_r = train_step(recomputed, x, ilens, amp)
        assert torch.equal(len_k, len_r)
        assert (y_r - y_k).abs().max() <= tol * y_k.abs().max()
        assert_grads_close(g_r, g_k, tol)
    assert recomputed.training_graphs.captures == 1


def test_recomputed_input_layer_holds_less_cuda():
    """What the conv2d subsampling holds on the GPU for its backward pass, bf16 autocast: the
    first convolution's output (256 x 2999 x 39 values) is not held when recomputed."""
    from espnet_mamba.encoders.input_layer import InputLayer

    held = {}
    x = torch.randn(1, 6000, 80, device="cuda")
    first_conv_out = 256 * 2999 * 39 * 2  # bf16
    for recompute in (False, True):
        layer = InputLayer("conv2d", 80, 256, 0.0, recompute=recompute).cuda()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = layer(x, None)[0]
        held[recompute] = torch.cuda.memory_allocated() - before
        y.float().square().mean().backward()
        del y, layer
    assert held[False] - held[True] >= first_conv_out, held
