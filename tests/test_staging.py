"""Prefill staging in offload mode: GPU slots follow a request's prompt chunks and come back
when its prefill ends; the free count returns to its start value."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.runtime.tiered.staging import Staging, StagingFull


def test_chunks_accumulate_then_release_returns_every_slot() -> None:
    st = Staging(logical_slots=100, base_slot=40, size=10, max_reqs=8, context_len=16, device="cpu")
    start = st.available()
    # one extend: request a (row 3) prefills 3 tokens, request b (row 5) 1 token
    first = st.place(["a", "b"], torch.tensor([3, 5]), [0, 0], [3, 1], torch.tensor([7, 8, 9, 20, 99]))
    # the next chunk of a's prompt, in a later extend
    second = st.place(["a"], torch.tensor([3]), [3], [2], torch.tensor([50, 51]))
    assert st.table[3, :5].tolist() == first[:3].tolist() + second.tolist(), "positions → GPU slots for attention"
    assert st.table[5, 0] == first[3]
    assert sorted(st.held()) == ["a", "b"] and st.in_use() == 6
    gpu = torch.cat([first, second])
    assert gpu.unique().numel() == 6 and bool(((gpu >= 40) & (gpu < 50)).all())
    assert st.translate(torch.tensor([7, 51, 20, 0, 99])).tolist() == [int(first[0]), int(second[1]), int(first[3]), -1, -1]
    assert st.available() == start - 6
    assert st.release(["a"]) == 5 and st.release(["a", "nobody"]) == 0, "a second release is a no-op"
    assert st.translate(torch.tensor([7, 8, 9, 50, 51])).tolist() == [-1] * 5
    assert st.translate(torch.tensor([20])).tolist() == [int(first[3])]
    st.release(["b"])
    assert st.available() == start and bool((st.map == -1).all()) and st.held() == []


def test_full_staging_refuses_with_a_clear_error_and_changes_nothing() -> None:
    st = Staging(logical_slots=50, base_slot=0, size=4, max_reqs=4, context_len=8, device="cpu")
    st.place(["a"], torch.tensor([1]), [0], [3], torch.tensor([1, 2, 3]))
    with pytest.raises(StagingFull, match="holds 4 tokens and 3 are in use; 2 more do not fit"):
        st.place(["b"], torch.tensor([2]), [0], [2], torch.tensor([10, 11]))
    assert st.available() == 1 and st.translate(torch.tensor([10, 11])).tolist() == [-1, -1]
    assert st.held() == ["a"]
    assert st.place(["b"], torch.tensor([2]), [0], [1], torch.tensor([10])).numel() == 1, "the last slot is still usable"


def test_a_release_leaves_logical_slots_another_request_has_since_staged() -> None:
    """With the radix cache SGLang frees a chunk's duplicate logical slots while the chunk stays
    staged; another prefilling request may get them. Releasing the first must not unmap them."""
    st = Staging(logical_slots=50, base_slot=0, size=8, max_reqs=4, context_len=8, device="cpu")
    st.place(["a"], torch.tensor([1]), [0], [3], torch.tensor([5, 6, 7]))
    b = st.place(["b"], torch.tensor([2]), [0], [2], torch.tensor([6, 7]))  # 6 and 7, freed and reused
    st.release(["a"])
    assert st.translate(torch.tensor([5, 6, 7])).tolist() == [-1, int(b[0]), int(b[1])]
    st.release(["b"])
    assert bool((st.map == -1).all()) and st.available() == 8


def test_with_gpu_homes_a_homed_token_is_read_in_place_and_its_reserved_slot_comes_back() -> None:
    """Slots up to ``homes`` are GPU rows already: the table and ``translate`` name them
    themselves; the staging slot each reserves is counted until release, then free again."""
    st = Staging(logical_slots=100, base_slot=40, size=10, max_reqs=8, context_len=16, device="cpu", homes=30)
    rows = st.place(["a"], torch.tensor([3]), [0], [4], torch.tensor([7, 55, 30, 31]))
    assert rows[[0, 2]].tolist() == [7, 30] and bool(((rows[[1, 3]] >= 40) & (rows[[1, 3]] < 50)).all())
    assert st.table[3, :4].tolist() == rows.tolist() and st.in_use() == 4
    assert st.translate(torch.tensor([7, 55, 12, 99])).tolist() == [7, int(rows[1]), 12, -1], "any home is its own row"
    assert st.release(["a"]) == 4 and st.available() == 10
    assert st.translate(torch.tensor([55, 31])).tolist() == [-1, -1] and st.translate(torch.tensor([7])).tolist() == [7]
