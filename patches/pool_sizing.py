"""Charge the a2ats backend's GPU memory in SGLang's KV pool sizing.

Target: ``sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.config_from_budget``
(SGLang 0.5.17), where the profiled free bytes become KV slots (``budget // cell_size``). When
the ``a2ats`` backend is in use, its fixed bytes (codebooks, decode scratch) come off the
budget and each slot costs its codes too: ``slots = (budget − fixed) // (cell + codes)``, so the
pool shrinks by what the backend allocates later and ``--mem-fraction-static`` keeps its meaning.

With ``--a2ats-offload`` the budget is split by
:func:`~a2ats_sglang.runtime.memory.plan_offload` instead: the pool SGLang's allocator counts
is the host pool's logical slots, and the GPU holds their codes, prefill staging and the hot
buffers (the plan is kept for the ``max_running`` and ``kv_pool`` patches).
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from typing import Any

TARGET = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.config_from_budget"
SIGNATURE = "(self, budget_bytes: 'int', *, cap_tokens: 'Optional[int]' = None) -> 'MemoryPoolConfig'"

logger = logging.getLogger(__name__)
_installed = False  # set by install_around


def a2ats_in_use(server_args: Any) -> bool:
    return "a2ats" in (server_args.attention_backend, server_args.decode_attention_backend)


def attn_tp_size() -> int:
    """Ranks the attention heads are split over (SGLang's own pools size per rank by it)."""
    from sglang.srt.runtime_context import get_parallel

    return get_parallel().attn_tp_size


def kv_heads_per_rank(model_config: Any) -> int:
    """Kv heads this rank holds: its codes, codebooks and KV are counted for those only."""
    return model_config.get_num_kv_heads(attn_tp_size())


def charge(original, kvc, budget_bytes: int, **kwargs):
    if not a2ats_in_use(kvc.server_args):
        return original(kvc, budget_bytes, **kwargs)
    from sglang.srt.model_executor.pool_configurator import (
        create_memory_pool_configurator,
    )

    from a2ats_sglang.runtime.config import current_config
    from a2ats_sglang.runtime.memory import footprint

    mc, sa = kvc.model_config, kvc.server_args
    decode_graph = sa.cuda_graph_config.decode
    graph_bs = list(decode_graph.bs or []) if decode_graph.backend != "disabled" else []
    cfg = current_config()
    fp = footprint(
        cfg, kvc.layer_info.num_effective_layers, kv_heads_per_rank(mc), mc.head_dim,
        mc.context_len, max(graph_bs, default=0),
    )
    configurator = create_memory_pool_configurator(kvc)
    cell = configurator._cell_size
    if cfg.offload:
        plan = offload_plan(kvc, cfg, budget_bytes, cell, fp)
        homes = (f"GPU homes {plan.homes} tokens ({plan.homes * cell / 2**30:.1f} GiB), " if plan.homes else "")
        cache = (f"{homes}a shared cache of {plan.cache_slots} slots ({plan.cache_slots * cell / 2**30:.2f} GiB) for up to "
                 f"{plan.max_running} running requests" if plan.shared else
                 f"{plan.hot_buffers} hot buffers of {plan.hot_tokens} tokens "
                 f"({plan.hot_buffers * plan.hot_tokens * cell / 2**30:.2f} GiB)")
        logger.info(
            "A²ATS offload: host pool %d tokens (%.1f GiB pinned); GPU: codes %.1f MiB, staging %d tokens "
            "(%.2f GiB), %s, fixed %.1f MiB", plan.host_rows - 1, (plan.host_rows - 1) * cell / 2**30,
            plan.logical_slots * fp.per_token / 2**20, plan.staging_tokens, plan.staging_tokens * cell / 2**30, cache,
            fp.fixed / 2**20,
        )
        return configurator.calculate_pool_sizes_from_max_tokens(plan.logical_slots, 1)
    if budget_bytes <= fp.fixed:
        raise ValueError(
            f"A²ATS: the GPU's KV budget ({budget_bytes / 2**30:.2f} GiB, what --mem-fraction-static leaves) does not "
            f"hold the codebooks and decode buffers ({fp.fixed / 2**30:.2f} GiB): raise --mem-fraction-static, "
            "lower --cuda-graph-max-bs or calibrate a smaller codebook"
        )
    charged = max(0, budget_bytes - fp.fixed) * cell // (cell + fp.per_token)
    config = original(kvc, charged, **kwargs)
    logger.info(
        "A²ATS memory: %.1f MiB fixed (codebooks, decode scratch) + %d B/token codes on %d B/token "
        "KV; KV pool %d tokens", fp.fixed / 2**20, fp.per_token, cell, config.max_total_num_tokens,
    )
    return config


def offload_plan(kvc, cfg, budget_bytes: int, cell: int, fp):
    """Plan offload mode's GPU bytes for this budget and keep the plan for the later patches."""
    from a2ats_sglang.runtime.tiered.host_pool import plan_host_pool
    from a2ats_sglang.runtime.memory import (
        RUNNING_CAP,
        decode_budget,
        hot_table_bytes,
        plan_offload,
        plan_shared_offload,
        plan_tiered_offload,
    )
    from a2ats_sglang.runtime.tiered.plan import PickBudget, set_pick_budget, set_plan, staging_tokens
    from a2ats_sglang.runtime.preflight import check_offload

    mc, sa = kvc.model_config, kvc.server_args
    check_offload(sa)
    layers, heads = kvc.layer_info.num_effective_layers, kv_heads_per_rank(mc)
    host_slots = plan_host_pool(cell, cfg.host_kv_gb).slots
    if getattr(sa, "max_total_tokens", None):  # --max-total-tokens caps the logical slots too
        host_slots = min(host_slots, sa.max_total_tokens + 1)
    width = decode_budget(cfg).width(mc.context_len)
    staging = staging_tokens(mc.context_len, sa.chunked_prefill_size, sa.max_prefill_tokens)
    set_pick_budget(None)  # only GPU homes admit by the cache's pick limit
    if cfg.gpu_homes:
        tiered = partial(plan_tiered_offload, budget_bytes, cell, fp.per_token, fp.fixed, host_slots, width, staging,
                         layers, heads, max_homes=cfg.gpu_homes if cfg.gpu_homes > 0 else None)
        # request rows are cheap (their claim scratch): the cache's pick limit admits requests
        plan = tiered(sa.max_running_requests or RUNNING_CAP)
        set_pick_budget(PickBudget(decode_budget(cfg).width, plan.pick_limit, mc.context_len))
    elif cfg.offload_cache == "shared":
        plan = plan_shared_offload(budget_bytes, cell, fp.per_token, fp.fixed, host_slots, width, staging, layers, heads,
                                   max_running=sa.max_running_requests)
    else:
        plan = plan_offload(budget_bytes, cell, fp.per_token, fp.fixed, host_slots, width, mc.context_len, staging,
                            max_running=sa.max_running_requests, table_bytes=partial(hot_table_bytes, layers, heads))
    set_plan(plan)
    return plan


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], charge)
