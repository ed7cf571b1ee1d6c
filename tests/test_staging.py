"""Prefill staging in offload mode: GPU slots follow a request's prompt chunks and come back
when its prefill ends; the free count returns to its start value."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.runtime.staging import Staging, StagingFull


def test_chunks_accumulate_then_release_returns_every_slot() -> None:
    st = Staging(logical_slots=100, base_slot=40, size=10, max_reqs=8, context_len=16, device="cpu")
    start = st.available()
    first = st.place(3, 0, torch.tensor([7, 8, 9]))
    second = st.place(3, 3, torch.tensor([50, 51]))  # the next chunk of the same prompt
    other = st.place(5, 0, torch.tensor([20]))
    assert st.table[3, :5].tolist() == first.tolist() + second.tolist(), "positions → GPU slots for attention"
    assert sorted(st.held_rows()) == [3, 5]
    gpu = torch.cat([first, second, other])
    assert gpu.unique().numel() == 6 and bool(((gpu >= 40) & (gpu < 50)).all())
    assert st.translate(torch.tensor([7, 51, 20, 0])).tolist() == [*first.tolist()[:1], int(second[1]), int(other[0]), -1]
    assert st.available() == start - 6
    assert st.release(3) == 5 and st.release(3) == 0, "a second release is a no-op"
    assert st.translate(torch.tensor([7, 8, 9, 50, 51])).tolist() == [-1] * 5
    assert st.translate(torch.tensor([20])).tolist() == [int(other[0])]
    st.release(5)
    assert st.available() == start and bool((st.map == -1).all())


def test_full_staging_refuses_with_a_clear_error_and_changes_nothing() -> None:
    st = Staging(logical_slots=50, base_slot=0, size=4, max_reqs=4, context_len=8, device="cpu")
    st.place(1, 0, torch.tensor([1, 2, 3]))
    with pytest.raises(StagingFull, match="holds 4 tokens and 3 are in use; 2 more do not fit"):
        st.place(2, 0, torch.tensor([10, 11]))
    assert st.available() == 1 and st.translate(torch.tensor([10, 11])).tolist() == [-1, -1]
    assert st.place(2, 0, torch.tensor([10])).numel() == 1, "the last slot is still usable"
