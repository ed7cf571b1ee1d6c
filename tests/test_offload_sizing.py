"""The three offload patches in SGLang's order: ``config_from_budget`` (plan), then
``resolve_max_num_reqs`` (rows capped), then ``_build_mha_kv_pool`` (the offload pool), with a
fake configurator and SGLang's real MHA pool on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from a2ats_sglang.runtime.config import A2ATSConfig
from a2ats_sglang.runtime.memory import decode_budget
from a2ats_sglang.runtime.tiered.plan import current_pick_budget, current_plan, current_staging, set_pick_budget, set_plan, set_staging

LAYERS, HEADS, DIM, CONTEXT = 2, 2, 16, 512
CELL = 2 * LAYERS * HEADS * DIM * 2


@pytest.fixture
def kvc(monkeypatch: pytest.MonkeyPatch):
    from sglang.srt.model_executor import pool_configurator

    from a2ats_sglang.patches import pool_sizing

    monkeypatch.setattr(pool_sizing, "attn_tp_size", lambda: 1)  # one rank
    monkeypatch.setattr(pool_configurator, "create_memory_pool_configurator", lambda kvc: SimpleNamespace(
        _cell_size=CELL, calculate_pool_sizes_from_max_tokens=lambda n, page: SimpleNamespace(max_total_num_tokens=n)))
    cfg = A2ATSConfig(offload=True, host_kv_gb=0.001, budget_ratio=0.1, budget_min=16, budget_max=None)
    monkeypatch.setenv("A2ATS_SGLANG_CONFIG", cfg.to_json())
    set_plan(None)
    yield SimpleNamespace(
        server_args=SimpleNamespace(
            attention_backend="a2ats", decode_attention_backend=None, disable_radix_cache=True, enable_mixed_chunk=False,
            page_size=1, enable_hierarchical_cache=False, chunked_prefill_size=256, max_prefill_tokens=128,
            max_running_requests=None, max_total_tokens=None, cuda_graph_config=SimpleNamespace(decode=SimpleNamespace(backend="disabled", bs=[]))),
        model_config=SimpleNamespace(get_num_kv_heads=lambda tp: HEADS, head_dim=DIM, context_len=CONTEXT),
        layer_info=SimpleNamespace(num_effective_layers=LAYERS), kv_cache_dtype=torch.bfloat16, device="cpu",
    ), cfg
    set_plan(None)
    set_staging(None)
    set_pick_budget(None)


def test_the_allocator_counts_host_slots_and_the_gpu_pool_holds_staging_and_hot_buffers(kvc) -> None:
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    from a2ats_sglang.patches import kv_pool, max_running, pool_sizing
    from a2ats_sglang.runtime.tiered.pool import OffloadKVPool

    kvc, cfg = kvc
    config = pool_sizing.charge(lambda *a, **k: pytest.fail("offload sizes the pool itself"), kvc, 64 * 2**20)
    plan = current_plan()
    host_slots = int(0.001 * 2**30) // CELL
    assert config.max_total_num_tokens == plan.logical_slots == host_slots - 1, "the host pool, less its padding slot"
    # 64 MiB holds 256 hot buffers of the whole 512-token context (256 B a token): all resident
    assert plan.hot_tokens == CONTEXT and plan.max_running == 256 and plan.staging_tokens == CONTEXT + 256
    rows = max_running.cap(lambda kvc, n: n // 2, kvc, config.max_total_num_tokens)
    assert rows == min(plan.max_running, config.max_total_num_tokens // 2)

    def original(kvc, *, max_total_num_tokens, mha_pool_class, quant_method=None):  # what SGLang does
        return mha_pool_class(max_total_num_tokens, page_size=1, dtype=kvc.kv_cache_dtype, head_num=HEADS, head_dim=DIM,
                              layer_num=LAYERS, device="cpu", enable_memory_saver=False, start_layer=0,
                              end_layer=LAYERS)  # exclusive, as a server passes it

    pool = kv_pool.build(original, kvc, max_total_num_tokens=config.max_total_num_tokens, mha_pool_class=MHATokenToKVPool)
    assert isinstance(pool, OffloadKVPool) and pool.plan == plan and current_staging() is pool.staging
    assert pool.get_key_buffer(0).shape[0] == plan.gpu_slots + 1, "staging + hot buffers (+ padding slot) on the GPU"
    assert pool.host.k.shape == (LAYERS, plan.logical_slots + 1, HEADS, DIM)
    assert pool.staging.size == plan.staging_tokens and pool.staging.table.shape[0] == plan.hot_buffers
    with pytest.raises(RuntimeError, match="SGLang sized 7 logical slots"):
        kv_pool.build(original, kvc, max_total_num_tokens=7, mha_pool_class=MHATokenToKVPool)


def test_hot_buffers_share_what_is_left(kvc) -> None:
    from a2ats_sglang.patches import pool_sizing
    from a2ats_sglang.runtime.memory import footprint, hot_table_bytes

    kvc, cfg = kvc
    budget = 4 * 2**20
    kvc.server_args.max_running_requests = 40
    pool_sizing.charge(None, kvc, budget)
    plan = current_plan()
    width = decode_budget(cfg).width(CONTEXT)
    assert plan.max_running == 40 and width < plan.hot_tokens < CONTEXT
    per_request = plan.hot_tokens * CELL + hot_table_bytes(LAYERS, HEADS, plan.hot_tokens)
    gpu = (footprint(cfg, LAYERS, HEADS, DIM, CONTEXT, graph_max_bs=0).fixed + plan.logical_slots * (LAYERS * HEADS * 2 + 4)
           + plan.staging_tokens * CELL + plan.hot_buffers * per_request)
    assert gpu <= budget < gpu + plan.hot_buffers * (CELL + 4 * LAYERS * HEADS + 4), "one more slot each would not fit"
    kvc.server_args.max_running_requests = 10
    pool_sizing.charge(None, kvc, budget)
    assert current_plan().hot_tokens > plan.hot_tokens, "fewer rows, larger buffers"


def test_max_total_tokens_caps_the_logical_slots(kvc) -> None:
    from a2ats_sglang.patches import pool_sizing

    kvc, _ = kvc
    kvc.server_args.max_total_tokens = 1000
    assert pool_sizing.charge(None, kvc, 64 * 2**20).max_total_num_tokens == 1000 == current_plan().logical_slots


def test_a_shared_cache_plan_limited_by_the_gpu_leaves_one_request_its_cache_and_scratch() -> None:
    """Codes of 10M host slots do not fit 8 GiB: the logical slots give way to one request's cache
    (two top-K widths for it and for row 0) and its claim scratch, which were counted after."""
    from a2ats_sglang.runtime.memory import SHARED_SLOTS_PER_PICK, plan_shared_offload
    from a2ats_sglang.runtime.tiered.shared_cache import cell_table_bytes, table_bytes_per_slot

    budget, kv, codes, width, staging, layers, heads = 8 * 2**30, 131072, 512, 1056, 8192, 32, 8
    plan = plan_shared_offload(budget, kv, codes, 0, 10**7, width, staging, layers, heads)
    assert plan.logical_slots < 10**7 - 1 and plan.max_running >= 1
    assert plan.cache_slots >= (plan.max_running + 1) * SHARED_SLOTS_PER_PICK * width
    used = (plan.logical_slots * (codes + 4 + table_bytes_per_slot(layers, heads)) + staging * kv
            + plan.cache_slots * (kv + heads * cell_table_bytes(layers)) + (plan.max_running + 1) * heads * 3 * width * 4)
    assert used <= budget
    roomy = plan_shared_offload(budget, kv, codes, 0, 10_000, width, staging, layers, heads)  # the host pool is the limit
    assert roomy.logical_slots == 9_999 and roomy.max_running > plan.max_running


def test_a_shared_cache_plan_without_room_for_one_request_and_its_scratch_is_refused() -> None:
    """Room for two rows' cache (a request's and row 0's) but not for both rows' claim scratch:
    no request could run, so the plan refuses rather than planning zero of them."""
    from a2ats_sglang.runtime.memory import SHARED_SLOTS_PER_PICK, OffloadSizingError, plan_shared_offload
    from a2ats_sglang.runtime.tiered.shared_cache import cell_table_bytes

    kv, codes, width, staging, layers, heads = 131072, 512, 1056, 64, 32, 8
    cache_row = SHARED_SLOTS_PER_PICK * width * (kv + heads * cell_table_bytes(layers))
    scratch_row = heads * 3 * width * 4
    budget = staging * kv + 2 * cache_row + scratch_row + scratch_row // 2
    with pytest.raises(OffloadSizingError, match="does not hold"):
        plan_shared_offload(budget, kv, codes, 0, 1, width, staging, layers, heads)


def test_without_offload_the_pool_is_sglangs(kvc) -> None:
    from a2ats_sglang.patches import kv_pool

    sentinel = object()
    built = kv_pool.build(lambda kvc, **kw: (sentinel, kw), kvc[0], max_total_num_tokens=5, mha_pool_class=dict)
    assert built == (sentinel, {"max_total_num_tokens": 5, "mha_pool_class": dict, "quant_method": None})


def test_a_shared_cache_takes_what_is_left_and_caps_running_by_its_size(kvc, monkeypatch: pytest.MonkeyPatch) -> None:
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    from a2ats_sglang.patches import kv_pool, max_running, pool_sizing
    from a2ats_sglang.runtime.memory import SHARED_SLOTS_PER_PICK, OffloadSizingError, footprint
    from a2ats_sglang.runtime.tiered.store import TieredStore
    from a2ats_sglang.runtime.tiered.shared_cache import SharedCache, cell_table_bytes, table_bytes_per_slot

    kvc, _ = kvc
    cfg = A2ATSConfig(offload=True, host_kv_gb=0.001, budget_ratio=0.1, budget_min=16, budget_max=None,
                      offload_cache="shared")
    monkeypatch.setenv("A2ATS_SGLANG_CONFIG", cfg.to_json())
    budget = 4 * 2**20
    config = pool_sizing.charge(None, kvc, budget)
    plan = current_plan()
    width = decode_budget(cfg).width(CONTEXT)
    assert plan.shared and plan.hot_tokens == 0 and config.max_total_num_tokens == plan.logical_slots
    # every byte counted: codes, staging map and cache table per logical slot; staging; cells and their tables
    per_slot = CELL + HEADS * cell_table_bytes(LAYERS)
    def scratch(running: int) -> int:  # SharedCache.scratch: 3·width int32 per (graph row, kv head)
        return (running + 1) * HEADS * 3 * width * 4

    gpu = (footprint(cfg, LAYERS, HEADS, DIM, CONTEXT, graph_max_bs=0).fixed
           + plan.logical_slots * (LAYERS * HEADS * 2 + 4 + table_bytes_per_slot(LAYERS, HEADS))
           + plan.staging_tokens * CELL + plan.cache_slots * per_slot + scratch(plan.max_running))
    assert gpu <= budget < gpu + per_slot
    assert 1 <= plan.max_running <= min(256, plan.cache_slots // (SHARED_SLOTS_PER_PICK * width) - 1)
    # one more request would not fit: its scratch and two widths of cache are more than is left
    more = gpu - plan.cache_slots * per_slot - scratch(plan.max_running) + scratch(plan.max_running + 1)
    assert plan.max_running == 256 or more + (plan.max_running + 2) * SHARED_SLOTS_PER_PICK * width * per_slot > budget
    assert plan.gpu_slots == plan.staging_tokens + plan.cache_slots
    assert max_running.cap(lambda kvc, n: 10**6, kvc, config.max_total_num_tokens) == plan.max_running

    def original(kvc, *, max_total_num_tokens, mha_pool_class, quant_method=None):
        return mha_pool_class(max_total_num_tokens, page_size=1, dtype=kvc.kv_cache_dtype, head_num=HEADS, head_dim=DIM,
                              layer_num=LAYERS, device="cpu", enable_memory_saver=False, start_layer=0, end_layer=LAYERS)

    pool = kv_pool.build(original, kvc, max_total_num_tokens=config.max_total_num_tokens, mha_pool_class=MHATokenToKVPool)
    off = TieredStore(pool, LAYERS, width, "cpu")
    assert isinstance(off.hot, SharedCache) and off.hot.cells == plan.cache_slots * HEADS
    assert off.hot.base_cell + off.hot.cells <= pool.get_key_buffer(0).shape[0] * HEADS  # inside the GPU tensors
    assert pool.on_write is not None  # a written slot drops its cached copies
    off.hot.cached[1, 3 * HEADS : 4 * HEADS] = 5
    pool.on_write(1, torch.tensor([3]))
    assert (off.hot.cached[1, 3 * HEADS : 4 * HEADS] == -1).all()

    kvc.server_args.max_running_requests = 10**4
    with pytest.raises(OffloadSizingError, match="--max-running-requests 10000 needs a shared cache"):
        pool_sizing.charge(None, kvc, budget)


def test_gpu_homes_make_capacity_both_tiers_and_the_allocator_hands_them_out_first(kvc, monkeypatch) -> None:
    """``--a2ats-gpu-homes``: the logical slots are the host rows plus the GPU homes that fit next
    to the codes, staging and the shared cache; the pool keeps the homes first in its GPU tensors,
    the host pool one row per slot above them, and SGLang's allocator becomes the tiered one."""
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    from a2ats_sglang.patches import kv_pool, pool_sizing, tiered_allocator
    from a2ats_sglang.runtime.memory import SHARED_SLOTS_PER_PICK, TIERED_CACHE_SHARE, footprint
    from a2ats_sglang.runtime.tiered.allocator import TieredAllocator
    from a2ats_sglang.runtime.tiered.shared_cache import cell_table_bytes, table_bytes_per_slot

    kvc, _ = kvc
    cfg = A2ATSConfig(offload=True, host_kv_gb=0.001, budget_ratio=0.1, budget_min=16, budget_max=None,
                      offload_cache="shared", gpu_homes=-1)
    monkeypatch.setenv("A2ATS_SGLANG_CONFIG", cfg.to_json())
    kvc.server_args.max_running_requests = 8
    budget = 64 * 2**20
    config = pool_sizing.charge(None, kvc, budget)
    plan = current_plan()
    host_rows = int(0.001 * 2**30) // CELL
    width = decode_budget(cfg).width(CONTEXT)
    assert plan.homes > 0 and plan.logical_slots == plan.homes + host_rows - 1 == config.max_total_num_tokens
    assert plan.host_rows == host_rows and plan.max_running == 8
    per_slot = CELL + HEADS * cell_table_bytes(LAYERS)
    assert plan.cache_slots == int(TIERED_CACHE_SHARE * budget) // per_slot > SHARED_SLOTS_PER_PICK * width * 4
    assert plan.staging_base == plan.homes + 1
    # the scheduler admits requests whose widths sum to half the cache, less a chunked prompt's and row 0's
    assert plan.pick_limit == plan.cache_slots // SHARED_SLOTS_PER_PICK - 2 * width
    picks = current_pick_budget()
    assert picks.limit == plan.pick_limit and picks.of(10**6) == width == picks.of(CONTEXT) and picks.of(100) < width
    codes = LAYERS * HEADS * 2
    gpu = (footprint(cfg, LAYERS, HEADS, DIM, CONTEXT, graph_max_bs=0).fixed + plan.logical_slots * (codes + 4)
           + (host_rows - 1) * table_bytes_per_slot(LAYERS, HEADS) + plan.staging_tokens * CELL
           + plan.cache_slots * per_slot + 9 * HEADS * 3 * width * 4 + plan.homes * CELL)
    assert gpu <= budget < gpu + CELL + codes + 4, "one more home would not fit"

    def original(kvc, *, max_total_num_tokens, mha_pool_class, quant_method=None):
        return mha_pool_class(max_total_num_tokens, page_size=1, dtype=kvc.kv_cache_dtype, head_num=HEADS, head_dim=DIM,
                              layer_num=LAYERS, device="cpu", enable_memory_saver=False, start_layer=0, end_layer=LAYERS)

    pool = kv_pool.build(original, kvc, max_total_num_tokens=config.max_total_num_tokens, mha_pool_class=MHATokenToKVPool)
    assert pool.homes == plan.homes and pool.logical_slots == plan.logical_slots + 1
    assert pool.get_key_buffer(0).shape[0] == plan.gpu_slots + 1 and pool.host.k.shape[1] == host_rows
    sizes = SimpleNamespace(max_total_num_tokens=config.max_total_num_tokens)
    allocator = tiered_allocator.build(lambda *a, **k: pytest.fail("SGLang's allocator"), kvc, sizes=sizes,
                                       token_to_kv_pool=pool, is_dsv4_model=False, req_to_token_pool=None,
                                       token_to_kv_pool_allocator=None)
    assert isinstance(allocator, TieredAllocator) and allocator.tier_available() == (plan.homes, host_rows - 1)
    # without homes, SGLang builds its own
    pool.homes = 0
    assert tiered_allocator.build(lambda *a, **k: "sglang's", kvc, sizes=sizes, token_to_kv_pool=pool,
                                  is_dsv4_model=False, req_to_token_pool=None, token_to_kv_pool_allocator=None) == "sglang's"


def test_gpu_homes_without_the_shared_cache_are_refused() -> None:
    from a2ats_sglang.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="pass all three"):
        A2ATSConfig(offload=True, gpu_homes=-1)
    with pytest.raises(ConfigError, match="a number of tokens"):
        A2ATSConfig(offload=True, offload_cache="shared", gpu_homes=-2)


def test_a_cap_on_gpu_homes_leaves_the_rest_of_hbm_unplanned() -> None:
    from a2ats_sglang.runtime.memory import plan_tiered_offload

    args = (8 * 2**30, 131072, 512, 0, 5_000, 1056, 8192, 32, 8, 4)
    free = plan_tiered_offload(*args)
    capped = plan_tiered_offload(*args, max_homes=100)
    assert free.homes > 100 and capped.homes == 100 and capped.logical_slots == 100 + 4_999
    assert capped.cache_slots == free.cache_slots and capped.pick_limit == free.pick_limit > 0
