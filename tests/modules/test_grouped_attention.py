"""MultiHeadAttention.attend with fewer memory rows than queries: each memory row serves an
equal consecutive run of queries (the hypotheses of one utterance in a batched beam search),
which must equal attending with the memory rows repeated, padding masks included."""

import pytest
import torch

from espnet_mamba.modules.attention import MultiHeadAttention


@pytest.mark.parametrize("t_q", [1, 3])
def test_runs_of_queries_over_memory_rows_equal_repeated_rows(t_q):
    torch.manual_seed(0)
    att = MultiHeadAttention(16, 4).double().eval()
    memory = torch.randn(2, 9, 16, dtype=torch.float64)
    mask = torch.tensor([[True] * 9, [True] * 5 + [False] * 4])
    keys, values = att.project_memory(memory)
    query = torch.randn(6, t_q, 16, dtype=torch.float64)  # 2 utterances x 3 hypotheses
    grouped = att.attend(query, keys, values, mask)
    repeated = att.attend(query, keys.repeat_interleave(3, 0), values.repeat_interleave(3, 0),
                          mask.repeat_interleave(3, 0))
    assert grouped.shape == (6, t_q, 16)
    assert torch.allclose(grouped, repeated, rtol=0, atol=1e-12)
    # one memory row for all queries: broadcast, as before
    one = att.attend(query, keys[:1], values[:1], mask[:1])
    assert torch.allclose(one, att.attend(query, keys[:1].expand(6, -1, -1, -1),
                                          values[:1].expand(6, -1, -1, -1),
                                          mask[:1].expand(6, -1)), atol=1e-12)


def test_queries_that_do_not_split_into_runs_are_refused():
    att = MultiHeadAttention(16, 4)
    keys, values = att.project_memory(torch.randn(4, 5, 16))
    with pytest.raises(ValueError, match="5 queries cannot be split into runs over 4 memory rows"):
        att.attend(torch.randn(5, 1, 16), keys, values)
