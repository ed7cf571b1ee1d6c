"""Sizing of the offload mode's host KV pool: explicit sizes, the default from free RAM, and
clear errors for sizes the machine cannot give."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.runtime.tiered.host_pool import (
    GiB,
    HostKVPool,
    HostPoolPlan,
    kv_bytes_per_token,
    plan_host_pool,
)
from a2ats_sglang.runtime.preflight import DEFAULT_RAM_FRACTION, Unsupported


def test_bytes_per_token_llama_8b() -> None:
    assert kv_bytes_per_token(32, 8, 128, torch.bfloat16) == 128 * 1024  # 128 KiB, as the node README says


def test_explicit_and_default_sizes() -> None:
    per_token = kv_bytes_per_token(32, 8, 128, torch.bfloat16)
    assert plan_host_pool(per_token, 64, available_bytes=100 * GiB).slots == 64 * GiB // per_token
    default = plan_host_pool(per_token, None, available_bytes=100 * GiB)
    assert default.slots == int(100 * GiB * DEFAULT_RAM_FRACTION) // per_token
    assert default.nbytes <= 100 * GiB * DEFAULT_RAM_FRACTION


@pytest.mark.parametrize("requested, message", [
    (0, "must be positive"), (-3, "must be positive"), (95, "more pinned memory than this machine can spare"),
    (1e-7, "holds no token"),
])
def test_sizes_the_machine_cannot_give(requested: float, message: str) -> None:
    with pytest.raises(Unsupported, match=message):
        plan_host_pool(kv_bytes_per_token(32, 8, 128, torch.bfloat16), requested, available_bytes=100 * GiB)


def test_pool_layers_are_contiguous_slot_tables() -> None:
    plan = plan_host_pool(kv_bytes_per_token(2, 3, 16, torch.bfloat16), 1e-3, available_bytes=GiB)
    pool = HostKVPool(plan, 2, 3, 16, torch.bfloat16, pin=False)
    k, v = pool.layer(1)
    assert k.shape == (plan.slots, 3, 16) and k.is_contiguous() and v.is_contiguous()
    assert pool.nbytes == plan.slots * plan.bytes_per_token


@pytest.mark.gpu
def test_pinned_pool_is_exactly_its_size_and_the_gpu_writes_it_in_place() -> None:
    from a2ats_sglang.kernels.hot_buffer import store_to_host

    plan = HostPoolPlan(3001, kv_bytes_per_token(2, 3, 16, torch.bfloat16))  # no power of two
    pool = HostKVPool(plan, 2, 3, 16, torch.bfloat16)
    assert pool.k.is_pinned() and pool.v.is_pinned()
    assert pool.k.untyped_storage().nbytes() == 2 * 3001 * 3 * 16 * 2, "pinned at its own size, not rounded up"
    k, v = (torch.randn(4, 3, 16, device="cuda").bfloat16() for _ in range(2))
    loc = torch.tensor([5, 3000, 1, 77], device="cuda")
    host_k, host_v = pool.layer(1)
    store_to_host(k, v, loc, host_k, host_v)
    torch.cuda.synchronize()
    assert torch.equal(host_k[loc.cpu()], k.cpu()) and torch.equal(host_v[loc.cpu()], v.cpu())


@pytest.mark.gpu
def test_a_freed_pool_unpins_its_memory() -> None:
    """Pools freed and made again (tests, restarts in one process) get the allocator's same
    addresses back: registering them again fails (cudaError 712) unless the first was undone."""
    import gc

    plan = HostPoolPlan(4001, kv_bytes_per_token(2, 3, 16, torch.bfloat16))
    for _ in range(4):
        pool = HostKVPool(plan, 2, 3, 16, torch.bfloat16)
        assert pool.k.is_pinned()
        del pool
        gc.collect()


def test_prefault_touches_every_chunk() -> None:
    from a2ats_sglang.runtime.tiered.host_pool import prefault

    t = torch.full((3, 1001, 7), 5, dtype=torch.bfloat16)  # 42,042 bytes: 11 chunks of 4,000, the last short
    prefault(t, chunk_bytes=4000)
    assert bool((t == 0).all())
