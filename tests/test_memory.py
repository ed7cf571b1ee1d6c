"""GPU bytes the a2ats backend adds are charged in SGLang's KV-pool sizing (patches/pool_sizing)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from a2ats_sglang.method.codebook import ModelIdentity
from a2ats_sglang.runtime.config import A2ATSConfig
from a2ats_sglang.runtime.memory import footprint
from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers

CONFIGS = Path(__file__).parent / "configs"


def llama() -> ModelIdentity:
    return ModelIdentity.from_hf_config(json.loads((CONFIGS / "llama-3.1-8b.json").read_text()))


def test_footprint_counts_codes_codebooks_and_scratch() -> None:
    m = llama()
    cfg = A2ATSConfig(codebook=None, budget_ratio=0.03, budget_max=4096)
    fp = footprint(cfg, m.num_layers, m.num_kv_heads, m.head_dim, context_len=32832, graph_max_bs=16, size=4096)
    assert fp.per_token == 32 * 8 * 2  # one int16 code per layer and kv head
    codebooks = 32 * 8 * 4096 * (128 * 4 + 4 + 128 * 2)  # encode projection fp32, half norms, decoded bf16
    width = Budget(8, 64, 0.03, 256, 4096).width(32832)  # no codebook: 8 sinks, a 64-token window
    buckets = 10  # log2 WRoPE buckets from the 64-token window: edges 64, 128, …, 32768
    assert fp.fixed == codebooks + SparseDecodeBuffers.nbytes(16, 8, 32832, width, 4096, buckets, layers=32)
    lut = 16 * buckets * 8 * 4096 * 4  # the decode graph's group-reduced table, fp32
    assert SparseDecodeBuffers.nbytes(16, 8, 32832, width, 4096, buckets) - SparseDecodeBuffers.nbytes(
        16, 8, 32832, width, 4096, 0) == lut
    no_graph = footprint(cfg, m.num_layers, m.num_kv_heads, m.head_dim, 32832, graph_max_bs=0, size=4096)
    assert no_graph.fixed == codebooks


def test_pool_sizing_charges_only_the_a2ats_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from sglang.srt.model_executor import pool_configurator

    from a2ats_sglang.patches import pool_sizing

    cell = 131072  # Llama-3.1-8B: 32 layers × 8 kv heads × 128 × 2 (K, V) × 2 bytes
    monkeypatch.setattr(pool_configurator, "create_memory_pool_configurator", lambda kvc: SimpleNamespace(_cell_size=cell))
    monkeypatch.setattr(pool_sizing, "attn_tp_size", lambda: 1)
    monkeypatch.setenv("A2ATS_SGLANG_CONFIG", A2ATSConfig(codebook=None).to_json())
    m = llama()
    decode = SimpleNamespace(backend="full", bs=[1, 2, 4, 8, 16])

    def kvc(backend: str) -> SimpleNamespace:
        return SimpleNamespace(
            server_args=SimpleNamespace(attention_backend=backend, decode_attention_backend=None,
                                        cuda_graph_config=SimpleNamespace(decode=decode)),
            model_config=SimpleNamespace(get_num_kv_heads=lambda tp: max(1, m.num_kv_heads // tp), head_dim=m.head_dim,
                                         context_len=32832),
            layer_info=SimpleNamespace(num_effective_layers=m.num_layers),
        )

    def original(kvc, budget, **kwargs):
        return SimpleNamespace(max_total_num_tokens=budget // cell)

    budget = 60 * 2**30
    stock = pool_sizing.charge(original, kvc("flashinfer"), budget)
    assert stock.max_total_num_tokens == budget // cell
    ours = pool_sizing.charge(original, kvc("a2ats"), budget)
    fp = footprint(A2ATSConfig(), m.num_layers, m.num_kv_heads, m.head_dim, 32832, graph_max_bs=16)
    # slots × (KV + codes) + fixed bytes fit the budget, and one more slot would not
    slots = ours.max_total_num_tokens
    assert slots * (cell + fp.per_token) + fp.fixed <= budget < (slots + 2) * (cell + fp.per_token) + fp.fixed
    assert slots < stock.max_total_num_tokens
    with pytest.raises(ValueError, match="does not hold the codebooks and decode buffers"):
        pool_sizing.charge(original, kvc("a2ats"), fp.fixed)  # nothing left for a single slot
    # two ranks: each holds 4 of the 8 kv heads, so its cell (SGLang's, per rank) and its codes halve
    monkeypatch.setattr(pool_sizing, "attn_tp_size", lambda: 2)
    monkeypatch.setattr(pool_configurator, "create_memory_pool_configurator", lambda kvc: SimpleNamespace(_cell_size=cell // 2))
    rank = pool_sizing.charge(lambda kvc, b, **kw: SimpleNamespace(max_total_num_tokens=b // (cell // 2)), kvc("a2ats"), budget)
    fp2 = footprint(A2ATSConfig(), m.num_layers, m.num_kv_heads // 2, m.head_dim, 32832, graph_max_bs=16)
    assert fp2.per_token == fp.per_token // 2
    per = cell // 2 + fp2.per_token
    assert rank.max_total_num_tokens * per + fp2.fixed <= budget < (rank.max_total_num_tokens + 2) * per + fp2.fixed


def test_offload_footprint_llama_8b() -> None:
    """Offload mode keeps 512 bytes per context token on the GPU instead of 128 KiB of KV: a 32K
    request costs 16 MiB of codes, plus its hot buffer while it runs."""
    from a2ats_sglang.runtime.memory import offload_footprint

    m = llama()
    fp = offload_footprint(m.num_layers, m.num_kv_heads, m.head_dim, hot_tokens=2048)
    assert fp.per_context_token == 512 and fp.stock_per_context_token == 128 * 1024
    # K/V of 2,048 slots; per (layer, kv head) the token in each slot and a hand; the slot ids
    assert fp.per_running_request == 2048 * 128 * 1024 + 32 * 8 * (2048 * 4 + 4) + 2048 * 4


def test_offload_plan_splits_the_gpu_budget() -> None:
    from a2ats_sglang.runtime.memory import OffloadSizingError, auto_running, plan_offload

    kv, codes, fixed, gib = 128 * 1024, 512, 2**30, 2**30
    ctx, width = 65536, 2048

    def tables(hot: int) -> int:
        return 1024 * hot + 4096

    def used(plan) -> int:
        per_request = plan.hot_tokens * kv + tables(plan.hot_tokens)
        return fixed + plan.logical_slots * (codes + 4) + plan.staging_tokens * kv + plan.hot_buffers * per_request

    # 60 GiB for KV, 100 GiB of host KV (819,200 tokens = 12.5 requests of 64K), 64K staging
    plan = plan_offload(60 * gib, kv, codes, fixed, 819_200, width, ctx, 65536, table_bytes=tables)
    assert plan.logical_slots == 819_199, "codes for the whole host pool fit (its slot 0 is padding)"
    assert plan.max_running == auto_running(819_200, ctx) == 25, "twice the full-context requests the host holds"
    assert width < plan.hot_tokens < ctx
    grown = plan_offload(60 * gib, kv, codes, fixed, 819_200, width, ctx, 65536, table_bytes=tables,
                         max_running=plan.max_running)
    assert grown == plan
    bigger = type(plan)(plan.logical_slots, plan.max_running, plan.hot_tokens + 1, plan.staging_tokens)
    assert used(plan) <= 60 * gib < used(bigger), "the hot buffers take the whole budget, no more"
    assert plan.hot_base == 1 + 65536 and plan.gpu_slots == 65536 + (plan.max_running + 1) * plan.hot_tokens

    many = plan_offload(60 * gib, kv, codes, fixed, 819_200, width, ctx, 65536, table_bytes=tables, max_running=100)
    assert many.max_running == 100 and width <= many.hot_tokens < plan.hot_tokens
    assert used(many) <= 60 * gib
    # buffers of the whole context leave room for more rows: as many as fit, up to the cap
    short = plan_offload(60 * gib, kv, codes, fixed, 819_200, 64, 256, 4096, table_bytes=tables)
    assert short.hot_tokens == 256 and short.max_running == 256
    assert plan_offload(60 * gib, kv, codes, fixed, 819_200, 64, 256, 4096, running_cap=40).max_running == 40
    with pytest.raises(OffloadSizingError, match="--max-running-requests 500 needs 500 hot buffers of at least 2048"):
        plan_offload(60 * gib, kv, codes, fixed, 819_200, width, ctx, 65536, max_running=500)
    with pytest.raises(OffloadSizingError, match="does not hold the fixed tensors"):
        plan_offload(5 * gib, kv, codes, fixed, 819_200, width, ctx, 65536)


def test_auto_running_follows_the_host_pool() -> None:
    from a2ats_sglang.runtime.memory import auto_running

    assert auto_running(688_128, 65_800) == 21  # 84 GiB of Llama-8B KV: 10.5 full-context requests
    assert auto_running(10_001, 65_800) == 16 and auto_running(10**8, 4096) == 256
