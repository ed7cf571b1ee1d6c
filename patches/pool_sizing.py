"""Charge the a2ats backend's GPU memory in SGLang's KV pool sizing.

Target: ``sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.config_from_budget``
(SGLang 0.5.17), where the profiled free bytes become KV slots (``budget // cell_size``). When
the ``a2ats`` backend is in use, its fixed bytes (codebooks, decode scratch) come off the
budget and each slot costs its codes too: ``slots = (budget − fixed) // (cell + codes)``, so the
pool shrinks by what the backend allocates later and ``--mem-fraction-static`` keeps its meaning.
"""

from __future__ import annotations

import logging
from typing import Any

TARGET = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.config_from_budget"
SIGNATURE = "(self, budget_bytes: 'int', *, cap_tokens: 'Optional[int]' = None) -> 'MemoryPoolConfig'"

logger = logging.getLogger(__name__)
_installed = False


def a2ats_in_use(server_args: Any) -> bool:
    return "a2ats" in (server_args.attention_backend, server_args.decode_attention_backend)


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
    fp = footprint(
        current_config(), kvc.layer_info.num_effective_layers, mc.get_num_kv_heads(1), mc.head_dim,
        mc.context_len, max(graph_bs, default=0),
    )
    cell = create_memory_pool_configurator(kvc)._cell_size
    charged = max(0, budget_bytes - fp.fixed) * cell // (cell + fp.per_token)
    config = original(kvc, charged, **kwargs)
    logger.info(
        "A²ATS memory: %.1f MiB fixed (codebooks, decode scratch) + %d B/token codes on %d B/token "
        "KV; KV pool %d tokens", fp.fixed / 2**20, fp.per_token, cell, config.max_total_num_tokens,
    )
    return config


def install() -> None:
    global _installed
    if _installed:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET, charge, HookType.AROUND)
    HookRegistry.apply_hooks()
    _installed = True
