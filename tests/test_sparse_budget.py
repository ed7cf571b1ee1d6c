"""The decode step's row budgets: the host plan and the device offsets must agree exactly, and
the static top-K width of the graph must bound every row."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers, host_indptr


@pytest.mark.parametrize("budget", [
    Budget(8, 64, 0.03, 256, 4096), Budget(8, 64, 0.02, 0, None), Budget(0, 1, 1.0, 0, None), Budget(4, 16, 0.07, 3, 50),
])
def test_host_plan_and_device_offsets_agree(budget: Budget) -> None:
    g = torch.Generator().manual_seed(0)
    context = 32768
    lengths = torch.cat([torch.tensor([1, 2, 72, 73, 100, context]), torch.randint(1, context + 1, (58,), generator=g)])
    hkv = 3
    buffers = SparseDecodeBuffers(len(lengths), hkv, context, budget.width(context), 64, 1, "cpu")
    buffers.set_counts(lengths.to(torch.int32), budget)  # the device path (here on CPU tensors)
    rows = len(lengths) * hkv
    assert torch.equal(buffers.indptr[: rows + 1], host_indptr(lengths, budget, hkv))
    counts = buffers.counts[:rows].view(-1, hkv)
    assert bool((counts == counts[:, :1]).all()), "every kv head of a request keeps the same number"
    assert int(counts.max()) <= budget.width(context), "the graph's static width bounds every row"
    assert bool((counts[:, 0] <= lengths).all()) and bool((counts[:, 0] >= torch.clamp(lengths, max=budget.sinks + budget.window)).all())
    if budget.ratio == 1.0:
        assert torch.equal(counts[:, 0].long(), lengths), "a budget of the whole context keeps every token"


@pytest.mark.parametrize("layers", [1, 32])
def test_nbytes_matches_what_is_allocated(layers: int) -> None:
    b = Budget(8, 64, 0.03, 256, 4096)
    buffers = SparseDecodeBuffers(4, 8, 9000, b.width(9000), 4096, 9, "cpu", layers=layers)
    allocated = sum(t.numel() * t.element_size() for t in vars(buffers).values() if isinstance(t, torch.Tensor))
    assert SparseDecodeBuffers.nbytes(4, 8, 9000, b.width(9000), 4096, 9, layers=layers) == allocated
