"""espnet_mamba/graphs/decoding.py on the CPU: the bookkeeping around the graphs (keys,
input copies, output clones, the speech memory of an utterance, the first-replay check and the
fall-back to the eager step), with a stand-in for torch.cuda.CUDAGraph that replays by calling
the step on the graph's input buffers.  Real captures: tests/gpu/test_models_cuda.py."""

import copy
import pickle
import weakref

import pytest
import torch

from espnet_mamba.graphs import decoding as cuda_graph
from espnet_mamba.graphs.decoding import StepGraphs
from espnet_mamba.modules.state import map_state
from model_checks import run_beam_searches, tiny_decoder


class FakeGraph:
    """Replays like a captured graph: reads the input buffers, writes the output buffers."""

    def __init__(self, step, in_tokens, in_state, memory, out_logits, out_state, offset):
        # a real graph holds no Python reference to the memory it reads
        self.memory = None if memory is None else weakref.ref(memory)
        self.args = step, in_tokens, in_state
        self.outs = out_logits, out_state
        self.offset = offset
        self.replays = 0

    def replay(self):
        step, tokens, state = self.args
        logits, new = step(tokens, state, None if self.memory is None else self.memory())
        self.outs[0].copy_(logits + self.offset)
        for dst, src in zip(cuda_graph._leaves(self.outs[1]), cuda_graph._leaves(new)):
            dst.copy_(src)
        self.replays += 1


@pytest.fixture
def fake_capture(monkeypatch):
    """Graphs captured as FakeGraph; ``made`` lists them; ``offset`` corrupts the next ones."""
    made, opts = [], {"offset": 0.0}

    def capture(self, step, tokens, recurrent, memory):
        in_tokens, in_state = tokens.clone(), map_state(torch.Tensor.clone, recurrent)
        out_logits, out_state = step(in_tokens, in_state, memory)
        graph = FakeGraph(step, in_tokens, in_state, memory, out_logits, out_state,
                          opts["offset"])
        made.append(graph)
        return graph, in_tokens, in_state, out_logits, out_state

    monkeypatch.setattr(StepGraphs, "_capture", capture)
    return made, opts


def toy_step(tokens, recurrent, memory):
    """A step with a nested state and an optional memory added to the logits."""
    (a, b), = recurrent
    logits = tokens[:, None].float() * a + b.sum(-1, keepdim=True)
    if memory is not None:
        logits = logits + memory.bias
    return logits, ((a * 0.5 + 1, b + tokens[:, None].float()),)


def toy_state(rows):
    return ((torch.randn(rows, 3), torch.randn(rows, 2)),)


class Memory:
    def __init__(self, bias):
        self.bias = bias


def test_replay_equals_eager_one_graph_per_row_count(fake_capture):
    """A shape is captured the second time it is seen, replayed from then on, and each
    graph's first replay is checked against the eager step."""
    made, _ = fake_capture
    graphs = StepGraphs()
    for rows in (1, 4, 4, 2, 4, 4, 1, 1):
        tokens, state = torch.randint(0, 9, (rows,)), toy_state(rows)
        logits, new = graphs(toy_step, tokens, state, None)
        ref_logits, ref_new = toy_step(tokens, state, None)
        assert torch.equal(logits, ref_logits)
        assert all(torch.equal(x, y) for x, y in zip(cuda_graph._leaves(new),
                                                     cuda_graph._leaves(ref_new)))
    assert len(made) == 2 and len(graphs.graphs) == 2  # rows 4 and 1; 2 was seen once
    assert [c[0] for c in graphs.checks] == [4, 1]
    assert [g.replays for g in made] == [3, 2]
    assert graphs.disabled is None


def twice(graphs, *args):
    """The second call of a shape: the first one that runs a graph."""
    graphs(*args)
    return graphs(*args)


def test_outputs_are_not_the_graphs_buffers(fake_capture):
    graphs = StepGraphs()
    tokens = torch.tensor([1, 2])
    first, state1 = twice(graphs, toy_step, tokens, toy_state(2), None)
    kept = first.clone()
    second, _ = graphs(toy_step, tokens + 1, state1, None)  # replays into the same buffers
    assert torch.equal(first, kept) and not torch.equal(first, second)


def test_a_new_memory_drops_the_graphs_that_read_the_old_one(fake_capture):
    made, _ = fake_capture
    graphs = StepGraphs()
    tokens, state = torch.tensor([3]), toy_state(1)
    m1, m2 = Memory(torch.tensor(1.0)), Memory(torch.tensor(-5.0))
    twice(graphs, toy_step, tokens, state, None)  # a memory-free graph: kept throughout
    out1, _ = twice(graphs, toy_step, tokens, state, m1)
    again, _ = graphs(toy_step, tokens, state, m1)
    assert len(made) == 2 and torch.equal(out1, again)
    out2, _ = twice(graphs, toy_step, tokens, state, m2)
    assert len(made) == 3 and graphs.memory_ref() is m2 and len(graphs.graphs) == 2
    assert torch.equal(out2, toy_step(tokens, state, m2)[0])


def test_a_finished_utterance_memory_is_not_kept_alive(fake_capture):
    graphs = StepGraphs()
    memory = Memory(torch.tensor(1.0))
    twice(graphs, toy_step, torch.tensor([3]), toy_state(1), memory)
    ref = graphs.memory_ref
    del memory
    assert ref() is None  # only a weak reference: the utterance's keys/values can go


@pytest.mark.parametrize("offset", [0.5, float("nan"), float("inf")])
def test_a_graph_that_differs_falls_back_to_the_eager_result(fake_capture, offset):
    _, opts = fake_capture
    opts["offset"] = offset
    graphs = StepGraphs()
    tokens, state = torch.tensor([1, 2]), toy_state(2)
    graphs(toy_step, tokens, state, None)
    with pytest.warns(RuntimeWarning, match="differs from the eager step for 2 rows"):
        logits, _ = graphs(toy_step, tokens, state, None)
    assert torch.equal(logits, toy_step(tokens, state, None)[0])
    assert "differs" in graphs.disabled and not graphs.graphs
    assert not graphs.usable(tokens, training=False)


def test_max_rel_sees_nan_and_inf():
    a = torch.tensor([1.0, 2.0, float("inf")])
    assert cuda_graph._max_rel(a, a.clone()) == 0.0
    assert cuda_graph._max_rel(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0])) \
        == float("inf")
    assert cuda_graph._max_rel(torch.tensor([1.0, 2.0]), torch.tensor([1.0, float("inf")])) \
        == float("inf")
    assert cuda_graph._max_rel(a, torch.tensor([1.0, 2.0, -float("inf")])) == float("inf")


def test_a_failed_capture_falls_back_to_the_eager_step(monkeypatch):
    def refuse(*_):
        raise RuntimeError("operation not permitted when stream is capturing")

    recovered = []
    monkeypatch.setattr(StepGraphs, "_capture", refuse)
    monkeypatch.setattr(StepGraphs, "recover",
                        staticmethod(lambda device, stream: recovered.append(device)))
    graphs = StepGraphs()
    tokens, state = torch.tensor([4]), toy_state(1)
    graphs(toy_step, tokens, state, None)
    with pytest.warns(RuntimeWarning, match="capturing the decoding step failed: operation"):
        logits, _ = graphs(toy_step, tokens, state, None)
    assert torch.equal(logits, toy_step(tokens, state, None)[0])
    assert graphs.disabled and recovered == [torch.device("cpu")]  # stream and RNG put right


def test_a_process_that_cannot_be_put_right_stops_with_a_clear_error(monkeypatch):
    def refuse(*_):
        raise RuntimeError("operation not permitted when stream is capturing")

    def cannot(device, stream):
        raise RuntimeError("Offset increment outside graph capture encountered unexpectedly.")

    monkeypatch.setattr(StepGraphs, "_capture", refuse)
    monkeypatch.setattr(StepGraphs, "recover", staticmethod(cannot))
    graphs = StepGraphs()
    tokens, state = torch.tensor([4]), toy_state(1)
    graphs(toy_step, tokens, state, None)
    with pytest.raises(RuntimeError, match="could not be restored.*ESPNET_MAMBA_EXECUTION=cuda_graphs=false"):
        graphs(toy_step, tokens, state, None)


def test_graphs_are_per_inference_mode(fake_capture):
    """A graph captured under inference_mode has inference-tensor buffers, which no_grad code
    may not write to: the two modes get their own graphs."""
    made, _ = fake_capture
    graphs = StepGraphs()
    tokens, state = torch.tensor([1]), toy_state(1)
    with torch.inference_mode():
        twice(graphs, toy_step, tokens, state, None)
    with torch.no_grad():
        out, _ = twice(graphs, toy_step, tokens, state, None)
    assert len(made) == 2 and torch.equal(out, toy_step(tokens, state, None)[0])


def test_never_used_off_cuda_or_with_gradients(monkeypatch):
    graphs = StepGraphs()
    with torch.no_grad():
        assert not graphs.usable(torch.tensor([1]), training=False)  # CPU tensors
    # the other conditions, with a tensor that claims to be on CUDA
    cuda_like = type("T", (), {"is_cuda": True})()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    with torch.no_grad():
        assert graphs.usable(cuda_like, training=False)
        assert not graphs.usable(cuda_like, training=True)
    with torch.enable_grad():
        assert not graphs.usable(cuda_like, training=False)
    dec = tiny_decoder("samba_asr", "mamba")
    x = torch.randn(12, 32, dtype=torch.float64)
    with torch.no_grad():
        dec.batch_score(torch.ones(2, 1, dtype=torch.long), [dec.batch_init_state(x)] * 2, x)
    assert dec.step_graphs.graphs == {} and not dec.step_graphs.seen


def test_replaced_parameters_drop_the_graphs():
    """Parameters replaced without .to() (e.g. load_state_dict(assign=True)) are noticed at
    the next utterance: the graphs read the old storage."""
    dec = tiny_decoder("samba_asr", "mamba")
    x = torch.randn(12, 32, dtype=torch.float64)
    dec.init_state(x)
    dec.step_graphs.graphs["key"] = "a captured graph"
    dec.init_state(x)
    assert dec.step_graphs.graphs  # nothing changed
    dec.load_state_dict({k: v.clone() for k, v in dec.state_dict().items()}, assign=True)
    dec.init_state(x)
    assert dec.step_graphs.graphs == {}


def test_copies_and_casts_of_a_decoder_start_without_graphs():
    dec = tiny_decoder("samba_asr", "mamba")
    dec.step_graphs.graphs["key"] = "a captured graph"
    assert copy.deepcopy(dec).step_graphs.graphs == {}
    assert pickle.loads(pickle.dumps(dec)).step_graphs.graphs == {}
    assert dec.step_graphs.graphs == {"key": "a captured graph"}
    dec.to(torch.float32)  # new parameter storage: the graphs would read the old one
    assert dec.step_graphs.graphs == {}


@pytest.mark.parametrize("name,kw", [("samba_asr", {}),
                                     ("samba_asr", {"cross_connection": "prefix"}),
                                     ("speech_mamba", {})])
def test_beam_search_through_graphs_equals_eager(name, kw, fake_capture, monkeypatch):
    """ESPnet's BeamSearch and BatchBeamSearch with every step replayed from (stand-in)
    graphs give the n-best of the eager decoder: the decoders hand the graphs the right
    states and memory, and the cross-attention decoders' memory (speech_mamba, samba_asr's
    ``cross_connection: attention``) is the utterance's one shared object."""
    made, _ = fake_capture
    dec = tiny_decoder(name, "mamba", **kw)
    _, eager = run_beam_searches(dec, 0.3)
    assert not made
    monkeypatch.setattr(StepGraphs, "usable", lambda self, tokens, training: not training)
    _, graphed = run_beam_searches(dec, 0.3)
    assert made and dec.step_graphs.disabled is None
    for e, g in zip(eager, graphed):
        assert [h.yseq.tolist() for h in e] == [h.yseq.tolist() for h in g]
        assert [float(h.score) for h in e] == pytest.approx([float(h.score) for h in g])


def _steps(dec, ys, states, n):
    """n batch_score steps, each hypothesis keeping its own row; the log-probs of each step."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            logp, rows = dec.batch_score(ys, states, None)
            states = [dec.select_state(rows, i) for i in range(len(states))]
            out.append(logp)
    return out


def test_several_utterances_replay_from_graphs_with_their_kept_memory(fake_capture, monkeypatch):
    """Hypotheses of two utterances in one batch_score (BatchBeamSearch over a batch): their
    speech memories are stacked once and kept for them, so later steps replay a graph that reads
    that stack, and give the eager step's log-probs."""
    made, _ = fake_capture
    dec = tiny_decoder("speech_mamba", "mamba")
    xs = [torch.randn(12, 32, dtype=torch.float64) for _ in range(2)]
    ys = torch.ones(4, 1, dtype=torch.long)
    def grid():  # (utterance, beam) runs of 2, as BatchBeamSearch lays them out
        starts = [dec.batch_init_state(x) for x in xs]
        return [starts[0], starts[0], starts[1], starts[1]]
    with torch.no_grad():
        eager = _steps(dec, ys, grid(), 4)
    assert not made
    monkeypatch.setattr(StepGraphs, "usable", lambda self, tokens, training: not training)
    graphed = _steps(dec, ys, grid(), 4)
    # first sighting eager, then one capture, replayed by the later steps
    assert len(made) == 1 and made[0].replays == 3 and dec.step_graphs.disabled is None
    for e, g in zip(eager, graphed):
        assert torch.allclose(e, g, rtol=1e-12, atol=1e-12)


def test_hypotheses_not_in_utterance_runs_run_eagerly(fake_capture, monkeypatch):
    """Memories that are not equal runs of one utterance each are stacked row by row anew
    every step: no graph reads such a stack (it is gone at the next step)."""
    made, _ = fake_capture
    monkeypatch.setattr(StepGraphs, "usable", lambda self, tokens, training: not training)
    dec = tiny_decoder("speech_mamba", "mamba")
    xs = [torch.randn(12, 32, dtype=torch.float64) for _ in range(2)]
    with torch.no_grad():
        s0, s1 = (dec.batch_init_state(x) for x in xs)
        _steps(dec, torch.ones(3, 1, dtype=torch.long), [s0, s1, s0], 3)
    assert not made and not dec.step_graphs.seen


@pytest.mark.parametrize("how", ["option", "environment", "set_execution"])
def test_execution_option_turns_the_decoding_graphs_off(monkeypatch, how):
    """cuda_graphs: false (decoder_conf, ESPNET_MAMBA_EXECUTION at build, or set_execution on a
    built decoder): beam search never asks for a graph."""
    from espnet_mamba.modules.execution import set_execution
    if how == "environment":
        monkeypatch.setenv("ESPNET_MAMBA_EXECUTION", "cuda_graphs=false")
    dec = tiny_decoder("samba_asr", "mamba", **({"cuda_graphs": False} if how == "option"
                                                  else {}))
    if how == "set_execution":
        assert dec.execution.cuda_graphs
        set_execution(dec, cuda_graphs=False)
    assert not dec.execution.cuda_graphs

    def no_graphs(*args):
        raise AssertionError("a graph was asked for")
    monkeypatch.setattr(StepGraphs, "usable", no_graphs)
    x = torch.randn(12, 32, dtype=torch.float64)
    with torch.no_grad():
        dec.batch_score(torch.ones(2, 1, dtype=torch.long), [dec.batch_init_state(x)] * 2, x)
