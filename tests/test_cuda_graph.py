"""espnet_mamba/modules/cuda_graph.py on the CPU: the bookkeeping around the graphs (keys,
input copies, output clones, the speech memory of an utterance, the first-replay check and the
fall-back to the eager step), with a stand-in for torch.cuda.CUDAGraph that replays by calling
the step on the graph's input buffers.  Real captures: tests/gpu/test_models_cuda.py."""

import copy
import pickle

import pytest
import torch

from espnet_mamba.modules import cuda_graph
from espnet_mamba.modules.cuda_graph import StepGraphs
from espnet_mamba.modules.state import map_state
from model_checks import run_beam_searches, tiny_decoder


class FakeGraph:
    """Replays like a captured graph: reads the input buffers, writes the output buffers."""

    def __init__(self, step, in_tokens, in_state, memory, out_logits, out_state, offset):
        self.args = step, in_tokens, in_state, memory
        self.outs = out_logits, out_state
        self.offset = offset
        self.replays = 0

    def replay(self):
        step, tokens, state, memory = self.args
        logits, new = step(tokens, state, memory)
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
    made, _ = fake_capture
    graphs = StepGraphs()
    for rows in (1, 4, 4, 2, 4):
        tokens, state = torch.randint(0, 9, (rows,)), toy_state(rows)
        logits, new = graphs(toy_step, tokens, state, None)
        ref_logits, ref_new = toy_step(tokens, state, None)
        assert torch.equal(logits, ref_logits)
        assert all(torch.equal(x, y) for x, y in zip(cuda_graph._leaves(new),
                                                     cuda_graph._leaves(ref_new)))
    assert len(made) == 3 and len(graphs.graphs) == 3  # rows 1, 4, 2
    assert [c[0] for c in graphs.checks] == [1, 4, 2]  # the first replay of each is checked
    assert [g.replays for g in made] == [1, 3, 1]
    assert graphs.disabled is None


def test_outputs_are_not_the_graphs_buffers(fake_capture):
    graphs = StepGraphs()
    tokens = torch.tensor([1, 2])
    first, state1 = graphs(toy_step, tokens, toy_state(2), None)
    kept = first.clone()
    second, _ = graphs(toy_step, tokens + 1, state1, None)  # replays into the same buffers
    assert torch.equal(first, kept) and not torch.equal(first, second)


def test_a_new_memory_drops_the_graphs_that_read_the_old_one(fake_capture):
    made, _ = fake_capture
    graphs = StepGraphs()
    tokens, state = torch.tensor([3]), toy_state(1)
    m1, m2 = Memory(torch.tensor(1.0)), Memory(torch.tensor(-5.0))
    graphs(toy_step, tokens, state, None)  # a memory-free graph: kept throughout
    out1, _ = graphs(toy_step, tokens, state, m1)
    again, _ = graphs(toy_step, tokens, state, m1)
    assert len(made) == 2 and torch.equal(out1, again)
    out2, _ = graphs(toy_step, tokens, state, m2)
    assert len(made) == 3 and graphs.memory is m2 and len(graphs.graphs) == 2
    assert torch.equal(out2, toy_step(tokens, state, m2)[0])


def test_a_graph_that_differs_falls_back_to_the_eager_result(fake_capture):
    _, opts = fake_capture
    opts["offset"] = 0.5
    graphs = StepGraphs()
    tokens, state = torch.tensor([1, 2]), toy_state(2)
    with pytest.warns(RuntimeWarning, match="differs from the eager step for 2 rows"):
        logits, _ = graphs(toy_step, tokens, state, None)
    assert torch.equal(logits, toy_step(tokens, state, None)[0])
    assert "differs" in graphs.disabled and not graphs.graphs
    assert not graphs.usable(tokens, training=False)


def test_a_failed_capture_falls_back_to_the_eager_step(monkeypatch):
    def refuse(*_):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(StepGraphs, "_capture", refuse)
    graphs = StepGraphs()
    tokens, state = torch.tensor([4]), toy_state(1)
    with pytest.warns(RuntimeWarning, match="capturing the decoding step failed: operation"):
        logits, _ = graphs(toy_step, tokens, state, None)
    assert torch.equal(logits, toy_step(tokens, state, None)[0])
    assert graphs.disabled


@pytest.mark.parametrize("value,enabled", [(None, True), ("1", True), ("0", False),
                                           ("off", False), ("False", False)])
def test_environment_switch(monkeypatch, value, enabled):
    if value is None:
        monkeypatch.delenv(cuda_graph.ENV, raising=False)
    else:
        monkeypatch.setenv(cuda_graph.ENV, value)
    assert cuda_graph.enabled_by_env() is enabled


def test_never_used_off_cuda_or_with_gradients():
    graphs = StepGraphs()
    tokens = torch.tensor([1])
    with torch.no_grad():
        assert not graphs.usable(tokens, training=False)  # CPU tensors
    dec = tiny_decoder("samba_asr", "mamba")
    x = torch.randn(12, 32, dtype=torch.float64)
    with torch.no_grad():
        dec.batch_score(torch.ones(2, 1, dtype=torch.long), [dec.batch_init_state(x)] * 2, x)
    assert dec.step_graphs.graphs == {} and dec.step_graphs.checks == []


def test_copies_and_casts_of_a_decoder_start_without_graphs():
    dec = tiny_decoder("samba_asr", "mamba")
    dec.step_graphs.graphs["key"] = "a captured graph"
    assert copy.deepcopy(dec).step_graphs.graphs == {}
    assert pickle.loads(pickle.dumps(dec)).step_graphs.graphs == {}
    assert dec.step_graphs.graphs == {"key": "a captured graph"}
    dec.to(torch.float32)  # new parameter storage: the graphs would read the old one
    assert dec.step_graphs.graphs == {}


@pytest.mark.parametrize("name", ["samba_asr", "speech_mamba"])
def test_beam_search_through_graphs_equals_eager(name, fake_capture, monkeypatch):
    """ESPnet's BeamSearch and BatchBeamSearch with every step replayed from (stand-in)
    graphs give the n-best of the eager decoder: the decoders hand the graphs the right
    states and memory, and speech_mamba's memory is the utterance's one shared object."""
    made, _ = fake_capture
    dec = tiny_decoder(name, "mamba")
    _, eager = run_beam_searches(dec, 0.3)
    assert not made
    monkeypatch.setattr(StepGraphs, "usable", lambda self, tokens, training: not training)
    _, graphed = run_beam_searches(dec, 0.3)
    assert made and dec.step_graphs.disabled is None
    for e, g in zip(eager, graphed):
        assert [h.yseq.tolist() for h in e] == [h.yseq.tolist() for h in g]
        assert [float(h.score) for h in e] == pytest.approx([float(h.score) for h in g])
