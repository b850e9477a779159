"""ESPnet decoder contract shared by the decoders here: teacher forcing for training and
ESPnet's (Batch)ScorerInterface for beam search, on top of a fixed-size recurrent state.

A subclass implements three things:
  ``forward(hs_pad, hlens, ys_in_pad, ys_in_lens)``  teacher forcing, parallel scan;
  ``start_state(memory, lengths)``  the per-utterance work, done once: (recurrent state of batch
      b, speech memory or None);
  ``step(tokens, recurrent, memory)``  one token for a batch of hypotheses -> (logits, recurrent).

Per hypothesis the state is (recurrent rows of batch 1, reference to its utterance's memory).
The recurrent part has the same size after 2 tokens and after 400, so a decoding step costs the
same at any prefix length.  The memory is shared, never copied, by the hypotheses of one utterance.
On CUDA, beam search runs the step as a captured CUDA graph (graphs/decoding.py): the execution
option ``cuda_graphs: false`` (``decoder_conf``, ``ESPNET_MAMBA_EXECUTION=cuda_graphs=false`` or
``set_execution``: modules/execution.py) runs it eagerly.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch

from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.legacy.nets.scorer_interface import BatchScorerInterface
from espnet_mamba.graphs.decoding import StepGraphs
from espnet_mamba.modules.execution import Execution
from espnet_mamba.modules.state import map_state, select_row, stack_rows
from espnet_mamba.modules.strict_load import StrictLoadMixin


class _Batch:
    """Start states of several utterances (BatchBeamSearch's (n_utt, beam) grid): row r of the
    grid belongs to utterance r // beam."""

    def __init__(self, recurrent, memory, n_utt):
        self.recurrent, self.memory, self.n_utt = recurrent, memory, n_utt
        self._rows = {}  # utterance -> its state, one object shared by its hypotheses

    def row(self, r: int, n_rows: int):
        utt = r // (n_rows // self.n_utt)
        if utt not in self._rows:
            memory = None if self.memory is None else self.memory.select(utt)
            self._rows[utt] = (select_row(self.recurrent, utt), memory)
        return self._rows[utt]


class _Rows:
    """The states of a step's n hypotheses, kept as one batch for the next step.

    ``batch_score`` returns this instead of n row views: ESPnet's BatchBeamSearch then reorders
    it with :meth:`RecurrentDecoder.batch_select_state` (one ``index_select`` per tensor) rather
    than slicing n rows and stacking them again each step.  Indexing gives one hypothesis's
    state, which is what ESPnet's ``select_state`` and the non-batched search use.
    """

    def __init__(self, recurrent, memories: list):
        self.recurrent, self.memories = recurrent, memories

    def __len__(self):
        return len(self.memories)

    def __getitem__(self, i: int):
        return select_row(self.recurrent, i), self.memories[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class _RowRef(dict):
    """Hypothesis i of a :class:`_Rows` batch, not yet sliced out.  ESPnet's BatchBeamSearch
    selects the surviving hypotheses with ``select_state`` after every step; slicing every
    tensor of every layer there, only to stack the rows again in the next ``batch_score``,
    cost more host time than the decoder step itself.

    A dict only for ESPnet's ``_compact``, which copies the states of *ended* hypotheses out of
    the step's batch (else each would keep a whole batch alive until decoding ends): it reads
    ``items()``, and gets the row itself as a plain dict, which :func:`_gather` accepts too.
    """

    __slots__ = ("rows", "i")

    def __init__(self, rows: _Rows, i: int):
        super().__init__()
        self.rows, self.i = rows, i

    def __bool__(self):
        return True

    def items(self):
        recurrent, memory = self.rows[self.i]
        return [("recurrent", recurrent), ("memory", memory)]

    def get(self):
        return self.rows[self.i]


def _as_row(state):
    """A per-hypothesis state of any form -> (recurrent rows, memory)."""
    if isinstance(state, _RowRef):
        return state.get()
    if isinstance(state, dict):  # a _RowRef after ESPnet's _compact
        return state["recurrent"], state["memory"]
    return state


def _gather(states: list):
    """Per-hypothesis states -> (recurrent batch, memories), without copies where possible."""
    if states and all(isinstance(s, _RowRef) and s.rows is states[0].rows for s in states):
        rows, ids = states[0].rows, [s.i for s in states]
        if ids == list(range(len(rows))):
            return rows.recurrent, rows.memories
        index = torch.tensor(ids)
        recurrent = map_state(lambda t: t.index_select(0, index.to(t.device)), rows.recurrent)
        return recurrent, [rows.memories[j] for j in ids]
    states = [_as_row(s) for s in states]
    return stack_rows([s[0] for s in states]), [s[1] for s in states]


class RecurrentDecoder(StrictLoadMixin, AbsDecoder, BatchScorerInterface):
    # subclasses set ``self.execution`` (modules/execution.py); its ``cuda_graphs``: beam search
    # on CUDA replays the step as a CUDA graph (see above)
    execution: Execution = Execution(cuda_graphs=True)

    def start_state(self, memory: torch.Tensor, lengths: torch.Tensor):
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, recurrent, memory):
        raise NotImplementedError

    @property
    def step_graphs(self) -> StepGraphs:
        """This decoder's captured step graphs (created on first use)."""
        graphs = self.__dict__.get("_step_graphs")
        if graphs is None:
            graphs = self.__dict__["_step_graphs"] = StepGraphs()
        return graphs

    def execution_changed(self) -> None:
        """After :func:`~espnet_mamba.modules.execution.set_execution`: graphs captured under
        other settings (backend, fused kernels) are not replayed; switching ``cuda_graphs``
        alone keeps them."""
        how = self.execution.replace(cuda_graphs=False)
        if self.__dict__.get("_captured_under", how) != how:
            self.step_graphs.clear()
        self.__dict__["_captured_under"] = how

    def _apply(self, fn, *args, **kwargs):
        # .to()/.half()/.cuda() may give the parameters new storage the graphs do not read
        self.step_graphs.clear()
        return super()._apply(fn, *args, **kwargs)

    def _beam_step(self, tokens, recurrent, memory, shared_memory: bool):
        """``step`` for beam search: a CUDA graph where one can be used, else eager.
        ``shared_memory``: the memory (if any) is one object kept while the same utterances
        are decoded (one utterance's, or the stack of several: ``SpeechMemory.kept``)."""
        graphs = self.step_graphs
        if (self.execution.cuda_graphs and shared_memory
                and graphs.usable(tokens, self.training)):
            return graphs(self.step, tokens, recurrent, memory)
        return self.step(tokens, recurrent, memory)

    # --- ESPnet scorer interface -------------------------------------------------------------
    def init_state(self, x: torch.Tensor) -> Any:
        """x: encoder output of one utterance (T, D)."""
        self.step_graphs.follow(self)  # once per utterance: were the parameters replaced?
        lengths = torch.tensor([x.shape[0]], device=x.device)
        return self.start_state(x[None], lengths)

    def batch_init_state(self, x: torch.Tensor, xs_lengths: torch.Tensor = None) -> Any:
        if x.dim() == 2:
            return self.init_state(x)
        self.step_graphs.follow(self)
        if xs_lengths is None:
            xs_lengths = torch.full((x.shape[0],), x.shape[1], device=x.device)
        return _Batch(*self.start_state(x, xs_lengths), n_utt=x.shape[0])

    def score(self, ys: torch.Tensor, state: Any, x: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        logp, states = self.batch_score(ys[None], [state], x[None])
        return logp[0], states[0]  # a (recurrent rows, memory) tuple

    def batch_score(self, ys: torch.Tensor, states: List[Any], xs: torch.Tensor,
                    xs_mask: torch.Tensor = None) -> Tuple[torch.Tensor, List[Any]]:
        """Only the last token of each prefix is read: the state holds the rest.

        ``xs_mask`` (BatchBeamSearch over several padded utterances) is accepted and not
        needed: each utterance's start state was built from its own length
        (``batch_init_state(x, xs_lengths)``), so padded frames never reach it."""
        if isinstance(states, _Rows):
            recurrent, memories = states.recurrent, states.memories
        else:  # one state per hypothesis (e.g. after ESPnet's select_state)
            n = len(states)
            states = [s.row(r, n) if isinstance(s, _Batch) else s for r, s in enumerate(states)]
            recurrent, memories = _gather(states)
        memory = None if memories[0] is None else type(memories[0]).stack(memories)
        logits, recurrent = self._beam_step(ys[:, -1], recurrent, memory,
                                            memory is None or type(memory).kept(memories, memory))
        # half-precision logits are normalised in fp32; fp32/fp64 keep their precision
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)),
                                 dim=-1)
        return logp, _Rows(recurrent, memories)

    def select_state(self, state: Any, i: int, new_id: int = None) -> Any:
        """Hypothesis i of a step's output: a reference, sliced only if ever needed alone."""
        if isinstance(state, _Rows):
            return _RowRef(state, i)
        return None if state is None else state[i]

    def batch_select_state(self, state: Any, top_ids: torch.Tensor) -> _Rows:
        """Keep the states of the hypotheses that survive pruning, as one batch.

        top_ids: (n_utt, beam) of ``h * vocab + token``, h counted within each utterance (the
        layout ESPnet's BatchBeamSearch passes to scorers that define this method).
        """
        if not isinstance(state, _Rows):
            state = _Rows(*_gather(list(state)))
        n_utt = top_ids.shape[0]
        per_utt = len(state) // n_utt
        offsets = torch.arange(n_utt, device=top_ids.device)[:, None] * per_utt
        rows = (torch.div(top_ids, self.output_layer.out_features, rounding_mode="trunc")
                + offsets).view(-1)
        first = state.memories[0]
        if all(m is first for m in state.memories):  # one utterance: no host sync needed
            memories = [first] * len(rows)
        else:
            memories = [state.memories[j] for j in rows.tolist()]
        recurrent = map_state(lambda t: t.index_select(0, rows.to(t.device)), state.recurrent)
        return _Rows(recurrent, memories)
