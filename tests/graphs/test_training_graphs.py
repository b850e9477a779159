"""The encoders' ``cuda_graphs`` option (graphs/training.py) on the CPU, with a stand-in
capture that records what it was given and runs the layers: which calls replay a graph, the
length buckets (exact on the valid frames, gradients included), capture at the second sighting,
the shape limit, failed captures, accumulation (replayed), parameter changes and option errors.  The real
captures (outputs and gradients == eager) are in tests/gpu/test_graphed_encoder_cuda.py."""

import copy
import logging

import pytest
import torch

from espnet_mamba.graphs import training as training_graphs
from espnet_mamba.graphs.training import TrainingGraphs
from tensor_checks import grad_error, projection_loss
from model_checks import ENCODERS

FEATS = 20


class StandIn:
    """Replaces torch.cuda.make_graphed_callables, with its contract and memory semantics: it
    takes a callable and flat sample tensors (a module's parameters are appended, as torch
    does), and each 'graph' keeps one output buffer, one set of saved activations and one
    gradient buffer per input, all overwritten by its next replay, and returns them detached
    (so autograd stores the weight gradients as ``.grad`` without a copy, as with real graphs).
    Records each capture (with its sample tensors) and replay and the autocast cache state they
    ran under."""

    def __init__(self, fail=False):
        self.fail, self.captures, self.replays = fail, [], []

    def __call__(self, func, sample, num_warmup_iters, pool):
        self.captures.append({"shape": tuple(sample[0].shape), "warmup": num_warmup_iters,
                              "cache": torch.is_autocast_cache_enabled(), "sample": sample})
        if self.fail:
            raise RuntimeError("capture refused")
        params = tuple(func.parameters()) if isinstance(func, torch.nn.Module) else ()
        surface = tuple(sample) + params
        n_user = len(sample)
        static = {}
        replays = self.replays

        class Graphed(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                replays.append({"shape": tuple(inputs[0].shape),
                                "cache": torch.is_autocast_cache_enabled()})
                with torch.no_grad():  # the user inputs go into the graph's static tensors
                    for s, i in zip(surface[:n_user], inputs[:n_user]):
                        if s.data_ptr() != i.data_ptr():
                            s.copy_(i)
                with torch.enable_grad():
                    y = func(*sample)
                static["y"] = y  # this graph's saved activations
                out = static.setdefault("out", torch.empty_like(y))
                out.copy_(y.detach())
                return out.detach()

            @staticmethod
            @torch.autograd.function.once_differentiable
            def backward(ctx, grad):
                wanted = [s for s in surface if s.requires_grad]
                # torch's default allow_unused_input=False: an unused input fails the capture
                grads = iter(torch.autograd.grad(static["y"], wanted, grad, allow_unused=False))
                buffers = static.setdefault("grads", [torch.empty_like(w) for w in wanted])
                out = []
                for b, g in zip(buffers, grads):
                    b.copy_(g) if g is not None else b.zero_()
                    out.append(b.detach())
                out = iter(out)
                return tuple(next(out) if s.requires_grad else None for s in surface)

        return lambda *user: Graphed.apply(*user, *params)


@pytest.fixture
def stand_in(monkeypatch):
    capture = StandIn()
    monkeypatch.setattr(TrainingGraphs, "make_graphed", staticmethod(capture))
    monkeypatch.setattr(TrainingGraphs, "devices", ("cpu", "cuda"))
    return capture


def encoder(name="samba_asr", **kw):
    torch.manual_seed(0)
    enc = ENCODERS[name](FEATS, output_size=32, num_blocks=2, d_state=8, dropout_rate=0.0, **kw)
    return enc.double().train()


def step(enc, x, ilens):
    """One training step's encoder output (valid frames) and parameter gradients."""
    enc.zero_grad(set_to_none=True)
    y, olens, _ = enc(x, ilens)
    mask = torch.arange(y.shape[1])[None, :] < olens[:, None]
    projection_loss(y * mask[..., None]).backward()
    return y.detach() * mask[..., None], olens, {n: p.grad.clone() for n, p in
                                                 enc.named_parameters() if p.grad is not None}


def assert_same_step(eager, graphed, x, ilens):
    """One training step of each: the same output lengths, outputs and every gradient (fp64)."""
    y_e, len_e, g_e = step(eager, x, ilens)
    y_g, len_g, g_g = step(graphed, x, ilens)
    assert torch.equal(len_e, len_g) and y_g.shape == y_e.shape
    assert (y_g - y_e).abs().max() <= 1e-9 * y_e.abs().max()
    assert g_g.keys() == g_e.keys()
    err, name = grad_error(g_g, g_e, floor=1e-3)
    assert err <= 1e-9, name


@pytest.mark.parametrize("batch_step, rows", [(1, 3), (4, 4)])
@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_buckets_are_exact_and_a_shape_is_captured_at_its_second_sighting(
        name, batch_step, rows, stand_in):
    eager = encoder(name)
    graphed = encoder(name, cuda_graphs=True,
                      cuda_graph_conf={"frame_step": 8, "batch_step": batch_step})
    assert graphed.state_dict().keys() == eager.state_dict().keys()
    # 3 utterances; 61 and 69 frames -> 14 and 16 subsampled: one bucket of 16
    for t, lengths in ((61, [61, 40, 25]), (69, [69, 50, 33]), (61, [61, 61, 13])):
        x = torch.randn(3, t, FEATS, dtype=torch.float64)
        ilens = torch.tensor(lengths)
        assert_same_step(eager, graphed, x, ilens)
    graphs = graphed.training_graphs
    # the second call captures; calls 2 and 3 replay (batch_step 4: one added one-frame row)
    assert [c["shape"] for c in stand_in.captures] == [(rows, 16, 32)]
    assert [r["shape"] for r in stand_in.replays] == [(rows, 16, 32)] * 2
    assert graphs.captures == 1 and graphs.capture_error is None


def test_a_setup_that_never_uses_graphs_says_so_once(stand_in, monkeypatch, caplog):
    """cuda_graphs asked for where they cannot run (here: off CUDA): one warning naming why,
    not one per step; routine eager steps (validation, accumulation) are not logged."""
    monkeypatch.setattr(TrainingGraphs, "devices", ("cuda",))
    enc = encoder(cuda_graphs=True)
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            step(enc, x, ilens)
        enc.eval()
        with torch.no_grad():
            enc(x, ilens)
    assert caplog.text.count("running eagerly") == 1
    assert "running eagerly (not on CUDA)" in caplog.text
    assert "not a training step" not in caplog.text


def test_eager_outside_training_steps_and_when_switched_off(stand_in, monkeypatch):
    """Off at run time: the environment at build (ESPNET_MAMBA_EXECUTION), or set_execution on
    the built encoder (and on again)."""
    from espnet_mamba.modules.execution import set_execution
    monkeypatch.setenv("ESPNET_MAMBA_EXECUTION", "cuda_graphs=false")
    assert encoder(cuda_graphs=True).training_graphs is None
    monkeypatch.delenv("ESPNET_MAMBA_EXECUTION")
    enc = encoder(cuda_graphs=True)
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    graphs = enc.training_graphs
    enc.eval()
    assert graphs.why_eager(enc, x) == "not a training step"
    enc.train()
    with torch.no_grad():
        assert graphs.why_eager(enc, x) == "not a training step"
    set_execution(enc, cuda_graphs=False)
    assert enc.training_graphs is None
    for _ in range(3):
        step(enc, x, ilens)
    assert stand_in.captures == [] and stand_in.replays == []
    set_execution(enc, cuda_graphs=True)
    graphs = enc.training_graphs
    enc.zero_grad(set_to_none=True)
    assert graphs.why_eager(enc, x) is None
    monkeypatch.setattr(TrainingGraphs, "devices", ("cuda",))
    assert graphs.why_eager(enc, x) == "not on CUDA"


def test_accumulated_gradients_replay_and_add_up(stand_in):
    """accum_grad 3, two optimizer steps: every micro-batch replays the graph, and the
    gradients are the eager sums.  A graph's gradients are its static buffers, which its next
    replay overwrites: they are copied out once per optimizer step, before its second replay.
    A micro-batch of a new shape (run eagerly) in between adds to the same gradients."""
    enc, ref = encoder(cuda_graphs=True), encoder()
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    step(enc, x, ilens)
    step(enc, x, ilens)  # second sighting: captured and replayed
    assert len(stand_in.replays) == 1
    graphs = enc.training_graphs
    x_new = torch.randn(2, 300, FEATS, dtype=torch.float64)  # another bucket, seen once
    for accumulation in ([1.0, 2.0, 0.5], [1.5, "new", -1.0]):
        replays, copies = len(stand_in.replays), graphs.grad_copies
        for model in (enc, ref):
            model.zero_grad(set_to_none=True)
            for scale in accumulation:
                xs = x_new if scale == "new" else x * scale
                projection_loss(model(xs, ilens)[0]).backward()
        assert len(stand_in.replays) - replays == sum(s != "new" for s in accumulation)
        assert graphs.grad_copies - copies == 1
        for (n, p), q in zip(enc.named_parameters(), ref.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), n
    assert graphs.why_eager(enc, x) is None  # gradients held: a replay may still come


def test_autocast_runs_without_its_weight_cache(stand_in):
    enc = encoder(cuda_graphs=True).float()
    x, ilens = torch.randn(2, 50, FEATS), torch.tensor([50, 30])
    for _ in range(2):
        enc.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # cache on, as in ESPnet's trainer
            y = enc(x, ilens)[0]
            cache_after = torch.is_autocast_cache_enabled()  # the outer setting is back
        y.float().square().mean().backward()
    assert stand_in.captures[0]["cache"] is False and stand_in.replays[0]["cache"] is False
    assert y.dtype == torch.bfloat16 and cache_after is True


def test_shape_limit_and_new_batch_sizes(stand_in, caplog):
    enc = encoder(cuda_graphs=True, cuda_graph_conf={"frame_step": 4, "max_shapes": 2})
    for batch, frames in ((2, 40), (2, 40), (3, 40), (3, 40), (2, 80), (2, 80), (2, 80)):
        x = torch.randn(batch, frames, FEATS, dtype=torch.float64)
        with caplog.at_level(logging.WARNING):
            step(enc, x, torch.full((batch,), frames))
    assert [c["shape"][:2] for c in stand_in.captures] == [(2, 12), (3, 12)]
    assert "max_shapes" in caplog.text and caplog.text.count("max_shapes") == 1


def test_a_failed_capture_turns_the_graphs_off(monkeypatch, caplog):
    """A failed capture restores the RNG (see restore_rng), is logged once, and every later step
    runs eagerly with the eager results; no other shape is tried."""
    capture = StandIn(fail=True)
    restored = []
    original = torch.cuda.graph
    monkeypatch.setattr(TrainingGraphs, "make_graphed", staticmethod(capture))
    monkeypatch.setattr(TrainingGraphs, "devices", ("cpu",))
    monkeypatch.setattr(TrainingGraphs, "recover",
                        staticmethod(lambda device, stream: restored.append(device)))
    enc, ref = encoder(cuda_graphs=True), encoder()
    with caplog.at_level(logging.WARNING):
        for frames in (50, 50, 50, 90, 90, 90):
            x, ilens = torch.randn(2, frames, FEATS, dtype=torch.float64), torch.tensor([frames, 30])
            y, _, grads = step(enc, x, ilens)
            y_ref, _, g_ref = step(ref, x, ilens)
            assert torch.allclose(y, y_ref)
            assert all(torch.allclose(grads[n], g) for n, g in g_ref.items())
    assert len(capture.captures) == 1 and restored == [torch.device("cpu")]
    assert torch.cuda.graph is original  # the capture-mode patch is undone after a failure too
    graphs = enc.training_graphs
    assert "capture refused" in graphs.capture_error and "capture refused" in graphs.disabled
    said = [r for r in caplog.records if "capture refused" in r.getMessage()]
    assert len(said) == 1 and "eagerly from now on" in said[0].getMessage()
    assert said[0].exc_info[1] is not None  # with the traceback of where the capture broke
    graphs.clear()  # a benchmark's clear() between settings does not turn them back on
    step(enc, x, ilens), step(enc, x, ilens)
    assert len(capture.captures) == 1


def test_a_generator_that_cannot_be_restored_stops_training(monkeypatch):
    """If CUDA's generator stays in capture mode, training cannot go on (every random op
    would fail later, far from the cause): a RuntimeError says why and how to turn it off."""
    def restore_fails(device, stream):
        raise RuntimeError("Offset increment outside graph capture encountered unexpectedly.")

    monkeypatch.setattr(TrainingGraphs, "make_graphed", staticmethod(StandIn(fail=True)))
    monkeypatch.setattr(TrainingGraphs, "devices", ("cpu",))
    monkeypatch.setattr(TrainingGraphs, "recover", staticmethod(restore_fails))
    enc = encoder(cuda_graphs=True)
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    step(enc, x, ilens)
    with pytest.raises(RuntimeError, match="capture refused.*cuda_graphs: false"):
        step(enc, x, ilens)


def test_out_of_memory_in_a_capture_is_raised_and_graphs_stay_on(monkeypatch, caplog):
    """Out of memory during a capture: the process is put right and the error raised, as it
    would be eagerly; the graphs are not turned off (a later, smaller shape may fit)."""
    class OutOfMemory(StandIn):
        def __call__(self, *args, **kwargs):
            if not self.captures:
                self.captures.append("oom")
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")
            return super().__call__(*args, **kwargs)

    capture, restored = OutOfMemory(), []
    monkeypatch.setattr(TrainingGraphs, "make_graphed", staticmethod(capture))
    monkeypatch.setattr(TrainingGraphs, "devices", ("cpu",))
    monkeypatch.setattr(TrainingGraphs, "recover",
                        staticmethod(lambda device, stream: restored.append(device)))
    enc = encoder(cuda_graphs=True)
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    step(enc, x, ilens)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        step(enc, x, ilens)
    assert restored and enc.training_graphs.disabled is None
    with caplog.at_level(logging.INFO):
        step(enc, x, ilens), step(enc, x, ilens)  # seen again, captured this time
    assert enc.training_graphs.captures == 1 and "captured shape" in caplog.text


def test_captures_run_in_thread_local_mode(monkeypatch):
    """make_graphed_callables captures through torch.cuda.graph with its default mode,
    'global'; during our capture that default is 'thread_local', and restored afterwards."""
    seen = []
    stand_in = StandIn()

    def capture(*args, **kwargs):
        seen.append(torch.cuda.graph.keywords)
        return stand_in(*args, **kwargs)

    original = torch.cuda.graph
    monkeypatch.setattr(TrainingGraphs, "make_graphed", staticmethod(capture))
    monkeypatch.setattr(TrainingGraphs, "devices", ("cpu",))
    enc = encoder(cuda_graphs=True)
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    step(enc, x, ilens), step(enc, x, ilens)
    assert seen == [{"capture_error_mode": "thread_local"}] and torch.cuda.graph is original


def test_graphs_follow_the_parameters(stand_in):
    enc = encoder(cuda_graphs=True)
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    step(enc, x, ilens)
    step(enc, x, ilens)
    assert enc.training_graphs.captures == 1
    # replaced parameters (as load_state_dict(assign=True) does): the old graphs go
    enc.load_state_dict({k: v.clone() for k, v in enc.state_dict().items()}, assign=True)
    step(enc, x, ilens)
    assert enc.training_graphs.graphs == {} and len(stand_in.captures) == 1
    step(enc, x, ilens)
    assert len(stand_in.captures) == 2
    enc.embed.requires_grad_(False)  # frozen input layer: a new capture
    step(enc, x, ilens)
    assert enc.training_graphs.graphs == {}
    step(enc, x, ilens)
    assert enc.training_graphs.graphs
    # a parameter replaced by a new object on the same memory: the graphs would give their
    # gradients to the old object, so they go too
    block = next(m for m in enc.modules() if isinstance(getattr(m, "D", None), torch.nn.Parameter))
    old = block.D
    block.D = torch.nn.Parameter(old.detach())
    assert block.D.data_ptr() == old.data_ptr()
    step(enc, x, ilens)
    assert enc.training_graphs.graphs == {}
    # a copy of the model starts without graphs and keeps the options
    enc.training_graphs.graphs["x"] = object()
    copied = copy.deepcopy(enc)
    assert copied.training_graphs.graphs == {} and copied.training_graphs.frame_step == 64


@pytest.mark.parametrize("conf, message", [
    ({"frame_steps": 8}, "unknown option"),
    ({"frame_step": 0}, "cuda_graph_conf.frame_step = 0: must be an integer >= 1"),
    ({"max_shapes": 2.5}, "cuda_graph_conf.max_shapes = 2.5: must be an integer"),
    ({"warmup": True}, "cuda_graph_conf.warmup = true: must be an integer"),
    ({"batch_step": -2}, "cuda_graph_conf.batch_step = -2: must be an integer >= 1"),
])
def test_bad_options_are_named(conf, message):
    with pytest.raises(ValueError, match=message):
        encoder(cuda_graphs=True, cuda_graph_conf=conf)


def test_options_it_does_not_combine_with():
    with pytest.raises(ValueError, match="does not combine with interctc_layer_idx"):
        encoder(cuda_graphs=True, interctc_layer_idx=[1])


@pytest.mark.parametrize("name, mixer, culprit", [
    ("samba_asr", "mamba", "Mamba"), ("speech_mamba", "mamba2", "MultiHeadAttention")])
def test_packed_graphs_need_layers_that_run_packed_rows(name, mixer, culprit):
    """A graph replays fixed shapes; a layer that unpacks a packed row makes (batch, longest)
    shapes: the combination is refused, naming the layer."""
    with pytest.raises(ValueError, match=f"natively .*: {culprit}\\. Set one"):
        encoder(name, mixer=mixer, mixer_conf=MIXER2 if mixer == "mamba2" else None,
                cuda_graphs=True, pack_sequences=True)


MIXER2 = {"headdim": 8}


@pytest.mark.parametrize("bidirectional", [True, False])
def test_packed_rows_replay_one_graph_per_bucket(bidirectional, stand_in):
    """pack_sequences + cuda_graphs (Mamba2 mixers): batches of other sizes and lengths whose
    packed rows fall in one bucket replay one graph, padded with one more utterance; outputs
    and every gradient == the padded encoder run eagerly (fp64, PyTorch seq_idx path)."""
    conf = dict(mixer="mamba2", mixer_conf=MIXER2, bidirectional=bidirectional)
    eager = encoder(**conf)
    graphed = encoder(pack_sequences=True, cuda_graphs=True,
                      cuda_graph_conf={"frame_step": 16}, **conf)
    graphed.load_state_dict(eager.state_dict())
    # subsampled lengths 14 + 9 + 5 = 28, 16 + 11 = 27, 14 + 14 + 1 = 29: one bucket of 32
    for lengths in ([61, 40, 25], [69, 50], [61, 61, 9]):
        x = torch.randn(len(lengths), max(lengths), FEATS, dtype=torch.float64)
        ilens = torch.tensor(lengths)
        assert_same_step(eager, graphed, x, ilens)
    assert [c["shape"] for c in stand_in.captures] == [(1, 32, 32)]
    assert [r["shape"] for r in stand_in.replays] == [(1, 32, 32)] * 2


def test_graphs_of_packed_rows_refuse_mixers_that_unpack_them():
    """packed_mixer: padded unpacks each row, which a graph of fixed shapes cannot replay:
    refused at build, and by set_execution (the encoder stays as it was)."""
    from espnet_mamba.modules.execution import set_execution
    with pytest.raises(ValueError, match="these unpack it: Mamba2"):
        encoder(mixer="mamba2", mixer_conf=MIXER2, pack_sequences=True, cuda_graphs=True,
                packed_mixer="padded")
    enc = encoder(mixer="mamba2", mixer_conf=MIXER2, pack_sequences=True, cuda_graphs=True)
    with pytest.raises(ValueError, match="these unpack it: Mamba2"):
        set_execution(enc, packed_mixer="padded")
    assert enc.execution.packed_mixer == "fused" and enc.training_graphs is not None


def test_default_options_are_documented():
    assert training_graphs.OPTIONS == {"frame_step": 64, "batch_step": 1, "max_shapes": 8,
                                       "warmup": 3}
    for name in training_graphs.OPTIONS:
        assert f"``{name}``" in training_graphs.__doc__


def test_one_line_of_espnet_config_turns_it_on(stand_in, tmp_path):
    """encoder_conf {cuda_graphs: true, cuda_graph_conf: {...}} through ESPnet's ASRTask: the
    model's loss and gradients are those of the same model without graphs."""
    import yaml
    from espnet2.tasks.asr import ASRTask

    (tmp_path / "tokens.txt").write_text("".join(t + "\n" for t in (
        "<blank>", "<unk>", "a", "b", "c", "<space>", "<sos/eos>")))
    models = []
    for graphs in (False, True):
        conf = {"encoder": "samba_asr", "decoder": "samba_asr", "frontend_conf": {"n_mels": 20},
                "encoder_conf": {"output_size": 16, "num_blocks": 2, "d_state": 4,
                                 "dropout_rate": 0.0, "cuda_graphs": graphs,
                                 "cuda_graph_conf": {"frame_step": 8, "max_shapes": 4}},
                "decoder_conf": {"num_blocks": 1, "d_state": 4, "dropout_rate": 0.0}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
        args = ASRTask.get_parser().parse_args(
            ["--config", str(tmp_path / "c.yaml"), "--token_list", str(tmp_path / "tokens.txt"),
             "--token_type", "char"])
        torch.manual_seed(0)
        models.append(ASRTask.build_model(args).train())
    assert models[1].encoder.training_graphs.frame_step == 8
    speech = torch.randn(2, 8000)
    batch = dict(speech=speech, speech_lengths=torch.tensor([8000, 6000]),
                 text=torch.tensor([[2, 3, 4], [3, 4, -1]]), text_lengths=torch.tensor([3, 2]))
    losses = []
    for model in models:
        for _ in range(2):  # the second step replays
            model.zero_grad(set_to_none=True)
            loss = model(**batch)[0]
            loss.backward()
        losses.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert len(stand_in.replays) == 1
    assert torch.allclose(losses[0][0], losses[1][0], rtol=1e-5)
    for n, g in losses[0][1].items():
        assert (losses[1][1][n] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-8, n


def test_two_passes_before_one_backward(stand_in):
    """Two encoder passes in one loss: the second runs eagerly while the first replay's
    backward is pending, so the gradients are right (a second replay would have overwritten
    the first one's activations and doubled its gradient); once the backward ran, replays
    resume."""
    enc, ref = encoder(cuda_graphs=True), encoder()
    x1, x2 = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.randn(2, 50, FEATS,
                                                                          dtype=torch.float64)
    ilens = torch.tensor([50, 30])
    step(enc, x1, ilens)
    step(enc, x1, ilens)  # captured and replayed
    assert len(stand_in.replays) == 1
    for model in (enc, ref):
        model.zero_grad(set_to_none=True)
        y1, y2 = model(x1, ilens)[0], model(x2, ilens)[0]
        if model is enc:
            pending = enc.training_graphs.why_eager(enc, x1)
            assert pending == "an earlier replay's backward has not run"
        (projection_loss(y1) + 2 * projection_loss(y2)).backward()
    assert len(stand_in.replays) == 2  # the first pass only
    for (n, p), q in zip(enc.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-13), n
    enc.zero_grad(set_to_none=True)
    assert enc.training_graphs.why_eager(enc, x1) is None  # backward ran: not pending
    y = enc(x1, ilens)[0]
    del y  # dropped without a backward: nothing can read its activations any more
    assert enc.training_graphs.why_eager(enc, x1) is None
    assert len(stand_in.replays) == 3


def test_an_output_kept_across_steps_is_not_overwritten(stand_in):
    enc = encoder(cuda_graphs=True)
    ilens = torch.tensor([50, 30])
    kept = []
    for _ in range(3):
        x = torch.randn(2, 50, FEATS, dtype=torch.float64)
        enc.zero_grad(set_to_none=True)
        y = enc(x, ilens)[0]
        y.square().mean().backward()
        kept.append((y.detach(), y.detach().clone()))
    assert len(stand_in.replays) == 2
    assert all(torch.equal(a, b) for a, b in kept)


def test_dataparallel_replicas_and_hooks_run_eagerly(stand_in):
    enc = encoder(cuda_graphs=True)
    x = torch.randn(2, 50, FEATS, dtype=torch.float64)
    replica = enc._replicate_for_data_parallel()  # what nn.DataParallel runs on each GPU
    assert enc.training_graphs.why_eager(replica, x) == "a DataParallel replica"
    handle = enc.encoders[0].register_forward_hook(lambda *_: None)
    assert enc.training_graphs.why_eager(enc, x).startswith("module hooks")
    handle.remove()
    enc.requires_grad_(False)
    assert enc.training_graphs.why_eager(enc, x) == "no trainable parameters"


def test_sub_module_training_flags_and_dropout_rates_are_part_of_the_graph(stand_in):
    enc = encoder(cuda_graphs=True)
    x, ilens = torch.randn(2, 50, FEATS, dtype=torch.float64), torch.tensor([50, 30])
    for _ in range(2):
        step(enc, x, ilens)
    assert enc.training_graphs.captures == 1
    enc.encoders[0].dropout.p = 0.2  # e.g. a dropout schedule
    step(enc, x, ilens)
    assert enc.training_graphs.graphs == {}
    for _ in range(2):
        step(enc, x, ilens)
    enc.encoders[1].eval()  # one block frozen in eval mode
    step(enc, x, ilens)
    assert enc.training_graphs.graphs == {} and len(stand_in.captures) == 2


def test_espnet_trainer_with_graphs_trains_as_without(stand_in, tmp_path):
    """ESPnet's own Trainer (asr_train in this process, so the stand-in capture is seen) for 3
    epochs with accum_grad 2 and validation: every micro-batch after the capture replays the
    graph, and the trained parameters are those of the same run without graphs (up to the
    rounding of the padded buckets)."""
    import yaml
    from espnet2.tasks.asr import ASRTask

    from cli_data import train_args, write_dataset

    ds = write_dataset(tmp_path / "data", repeat=2)
    shapes = {}
    for split in ("train", "valid"):
        keys = [line.split()[0] for line in ds.wav_scp(split).read_text().splitlines()]
        shapes[split] = tmp_path / f"{split}_shape"
        shapes[split].write_text("".join(f"{k} 16000\n" for k in keys))
    states, losses = {}, {}
    for graphs in (False, True):
        out = tmp_path / f"exp_{graphs}"
        config = {
            "encoder": "samba_asr", "decoder": "samba_asr",
            "encoder_conf": {"output_size": 16, "num_blocks": 2, "d_state": 4,
                             "dropout_rate": 0.0, "cuda_graphs": graphs},
            # the prefix reading: the attention reading's key bias has a zero gradient in exact
            # arithmetic (softmax ignores a shift common to all keys), and Adam turns its
            # rounding noise into full steps that differ between any two runs
            "decoder_conf": {"num_blocks": 1, "d_state": 4, "dropout_rate": 0.0,
                             "cross_connection": "prefix"},
            "frontend_conf": {"n_mels": 20}, "model_conf": {"lsm_weight": 0.0},
            "optim": "adam", "optim_conf": {"lr": 0.003}, "max_epoch": 3, "accum_grad": 2,
            "batch_type": "unsorted", "batch_size": 4, "keep_nbest_models": 1,
        }
        (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
        ASRTask.main(cmd=[str(a) for a in (
            "--config", tmp_path / "train.yaml", *train_args(ds),
            "--train_shape_file", shapes["train"], "--valid_shape_file", shapes["valid"],
            "--output_dir", out)])
        states[graphs] = torch.load(out / "3epoch.pth", map_location="cpu")
        stats = torch.load(out / "checkpoint.pth", map_location="cpu",
                           weights_only=False)["reporter"]["stats"]
        losses[graphs] = [stats[e]["train"]["loss"] for e in (1, 2, 3)]
    # the 8 training utterances make 2 batches (30 and 37 frames) of one bucket (64 frames):
    # one step of 2 micro-batches an epoch; epoch 1 sees the shape, then captures and replays
    # it in its second micro-batch; epochs 2 and 3 replay it in both (without the copy out of
    # the graph's buffers, the second replay would overwrite the first one's gradients)
    assert [c["shape"][:2] for c in stand_in.captures] == [(4, 64)]
    assert len(stand_in.replays) == 5
    assert states[True].keys() == states[False].keys()
    assert losses[False][2] < losses[False][0]  # it trains
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    for k, v in states[False].items():
        assert torch.allclose(states[True][k], v, rtol=1e-4, atol=1e-6), k


def test_one_utterance_with_packing_on_replays_the_padded_graph(stand_in):
    """A batch of one is not packed; with pack_sequences on it still takes the (padded) graph."""
    enc = encoder(mixer="mamba2", mixer_conf=MIXER2, pack_sequences=True, cuda_graphs=True)
    x, ilens = torch.randn(1, 50, FEATS, dtype=torch.float64), torch.tensor([50])
    for _ in range(2):
        step(enc, x, ilens)
    assert [c["shape"] for c in stand_in.captures] == [(1, 64, 32)]
    assert len(stand_in.replays) == 1


def test_the_capture_differentiates_stand_ins_sharing_the_parameters_memory(stand_in):
    """The capture is given, after the layers' inputs, one fresh leaf per layer parameter that
    shares its memory (not the parameter: a parameter's gradient accumulator made by an earlier
    eager step on CUDA's legacy stream, alive while that step's graph is referenced, breaks a
    backward capture); replays pass the parameters themselves, which get the gradients.  Here
    the previous step's output is kept alive across steps, as a caller may."""
    eager = encoder()
    graphed = encoder(cuda_graphs=True, cuda_graph_conf={"frame_step": 8})
    x, ilens = torch.randn(2, 61, FEATS, dtype=torch.float64), torch.tensor([61, 40])
    kept = []
    for _ in range(3):
        graphed.zero_grad(set_to_none=True)
        y, olens, _ = graphed(x, ilens)
        projection_loss(y).backward()
        kept.append(y)  # its graph, and the parameters' accumulators in it, stay alive
    assert graphed.training_graphs.captures == 1
    sample = stand_in.captures[0]["sample"]
    params = {p.data_ptr(): p for p in graphed.parameters()}
    stand_ins = sample[3:]  # after (xs, lengths, valid)
    assert len(stand_ins) > 0
    for s in stand_ins:
        p = params[s.data_ptr()]  # the same memory as one of the encoder's parameters
        assert s is not p and s.is_leaf and not isinstance(s, torch.nn.Parameter)
        assert s.requires_grad == p.requires_grad and s.shape == p.shape
    # and each layer parameter has exactly one stand-in
    layer_ptrs = {s.data_ptr() for s in stand_ins}
    assert len(layer_ptrs) == len(stand_ins)
    # the replayed step still gives the eager gradients, to the parameters themselves
    assert_same_step(eager, graphed, x, ilens)


def test_moving_the_encoder_drops_its_graphs(stand_in):
    """.to() (or .double(), .cuda()) may give the parameters new storage: the graphs, whose
    stand-ins keep the old storage alive, are dropped at once."""
    enc = encoder(cuda_graphs=True, cuda_graph_conf={"frame_step": 8})
    x, ilens = torch.randn(2, 61, FEATS, dtype=torch.float64), torch.tensor([61, 40])
    for _ in range(2):
        step(enc, x, ilens)
    assert enc.training_graphs.graphs
    enc.float()
    assert not enc.training_graphs.graphs and enc.training_graphs.captures == 0
