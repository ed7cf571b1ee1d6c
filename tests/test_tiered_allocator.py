"""The two-tier allocator hands out GPU homes first, also after frees, and counts both tiers
(``runtime/tiered/allocator.py``)."""

from __future__ import annotations

import random

import pytest
import torch

from a2ats_sglang.runtime.tiered.allocator import TieredAllocator, merge_sorted


def test_merge_sorted_is_the_sorted_union() -> None:
    rng = random.Random(0)
    for _ in range(50):
        values = rng.sample(range(1, 500), rng.randrange(0, 60))
        cut = rng.randrange(0, len(values) + 1)
        a, b = torch.tensor(sorted(values[:cut]), dtype=torch.int64), torch.tensor(values[cut:], dtype=torch.int64)
        assert merge_sorted(a, b).tolist() == sorted(values)


def allocator(size: int = 20, gpu_homes: int = 8) -> TieredAllocator:
    return TieredAllocator(size, gpu_homes, torch.bfloat16, "cpu", kvcache=None)


def test_gpu_homes_go_first_then_host_rows_and_both_tiers_are_counted() -> None:
    a = allocator()
    assert a.available_size() == 20 and a.tier_available() == (8, 12)
    first = a.alloc(5)
    assert first.tolist() == [1, 2, 3, 4, 5] and a.tier_available() == (3, 12)
    second = a.alloc(6)
    assert second.tolist() == [6, 7, 8, 9, 10, 11] and a.tier_available() == (0, 9)
    assert a.alloc(10) is None and a.available_size() == 9  # a refusal takes nothing


def test_a_freed_gpu_home_is_handed_out_before_free_host_rows() -> None:
    a = allocator()
    a.alloc(10)  # 1..8 on the GPU, 9 and 10 on the host
    a.free(torch.tensor([3, 9, 6]))
    assert a.available_size() == 13 and a.tier_available() == (2, 11)
    assert a.alloc(3).tolist() == [3, 6, 9]


def test_a_free_group_is_returned_at_its_end() -> None:
    a = allocator()
    held = a.alloc(12)
    a.free_group_begin()
    a.free(held[:4])
    a.free(held[8:])
    assert a.available_size() == 8  # not yet
    a.free_group_end()
    assert a.available_size() == 16 and a.tier_available() == (4, 12)
    assert a.alloc(4).tolist() == [1, 2, 3, 4]


def test_random_traffic_leaks_nothing_and_never_hands_out_a_slot_twice() -> None:
    rng = random.Random(1)
    a = allocator(200, 64)
    held: list[int] = []
    for _ in range(300):
        if held and rng.random() < 0.5:
            rng.shuffle(held)
            n = rng.randrange(1, len(held) + 1)
            a.free(torch.tensor(held[:n]))
            held = held[n:]
        else:
            got = a.alloc(rng.randrange(1, 30))
            if got is not None:
                assert not set(got.tolist()) & set(held)
                held += got.tolist()
                free = set(range(1, 201)) - set(held)
                assert not free or max(got.tolist()) < min(free)  # the lowest free slots: GPU homes first
        gpu, host = a.tier_available()
        assert gpu + host == a.available_size() == 200 - len(held)
        assert gpu == 64 - sum(1 for s in held if s <= 64)
    a.free(torch.tensor(held))
    assert a.tier_available() == (64, 136)
    assert a.alloc(200).tolist() == list(range(1, 201))


def test_clear_restores_every_slot() -> None:
    a = allocator()
    a.alloc(15)
    a.clear()
    assert a.tier_available() == (8, 12) and a.alloc(1).tolist() == [1]


@pytest.mark.parametrize("homes", [-1, 21])
def test_more_homes_than_slots_is_refused(homes: int) -> None:
    with pytest.raises(ValueError, match="GPU homes"):
        allocator(20, homes)


def test_radix_cache_traffic_returns_every_slot_to_its_tier() -> None:
    """SGLang's RadixCache over the tiered allocator: requests take slots (GPU homes first), cache
    their prompts, share prefixes (duplicates freed as SGLang frees them), and the tree is
    evicted; at the end both tiers hold every slot again, none twice."""
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey

    a = allocator(400, 150)
    cache = RadixCache(CacheInitParams(disable=False, req_to_token_pool=None, page_size=1, token_to_kv_pool_allocator=a))
    rng = random.Random(3)
    docs = [[rng.randrange(1000) for _ in range(rng.randrange(20, 60))] for _ in range(4)]
    for i in range(40):
        prompt = rng.choice(docs) + [rng.randrange(1000) for _ in range(rng.randrange(1, 30))]
        hit = cache.match_prefix(MatchPrefixParams(key=RadixKey(prompt))).device_indices
        need = len(prompt) - len(hit)
        if a.available_size() < need:
            cache.evict(EvictParams(num_tokens=need))
        new = a.alloc(need)
        assert new is not None, i
        value = torch.cat([hit, new])
        done = cache.insert(InsertParams(key=RadixKey(prompt), value=value))
        a.free(value[len(hit) : done.prefix_len])  # what the tree already held under other slots
        held = cache.total_size()
        gpu, host = a.tier_available()
        assert gpu + host + held == 400, i
    cache.evict(EvictParams(num_tokens=cache.total_size()))
    assert cache.total_size() == 0 and a.tier_available() == (150, 250)
    assert a.alloc(400).tolist() == list(range(1, 401)), "each slot once, GPU homes first"
