"""Hand out GPU homes first when offload mode homes tokens in HBM.

Target: ``sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_token_to_kv_pool_allocator``
(SGLang 0.5.17), which builds the allocator of logical slots. With ``--a2ats-gpu-homes`` the
pool is an :class:`~a2ats_sglang.runtime.tiered.pool.OffloadKVPool` with ``homes`` > 0, and the
allocator built instead is a :class:`~a2ats_sglang.runtime.tiered.allocator.TieredAllocator`
over the same slots: the scheduler admits against both tiers, and a new token takes the lowest
free slot, a GPU home while one is free. Other pools keep SGLang's allocator.
"""

from __future__ import annotations

import logging
import sys

TARGET = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_token_to_kv_pool_allocator"
SIGNATURE = ("(self, *, sizes: '_PoolSizes', token_to_kv_pool: 'KVCache', is_dsv4_model: 'bool', "
             "req_to_token_pool: 'ReqToTokenPool', token_to_kv_pool_allocator: 'Optional[BaseTokenToKVPoolAllocator]')"
             " -> 'BaseTokenToKVPoolAllocator'")

logger = logging.getLogger(__name__)
_installed = False  # set by install_around


def build(original, kvc, *, sizes, token_to_kv_pool, is_dsv4_model, req_to_token_pool, token_to_kv_pool_allocator):
    homes = getattr(token_to_kv_pool, "homes", 0)
    if not homes or token_to_kv_pool_allocator is not None:
        return original(kvc, sizes=sizes, token_to_kv_pool=token_to_kv_pool, is_dsv4_model=is_dsv4_model,
                        req_to_token_pool=req_to_token_pool, token_to_kv_pool_allocator=token_to_kv_pool_allocator)
    from a2ats_sglang.runtime.tiered.allocator import TieredAllocator

    logger.info("A²ATS offload: %d logical slots, the first %d homed in HBM", sizes.max_total_num_tokens, homes)
    return TieredAllocator(sizes.max_total_num_tokens, homes, kvc.kv_cache_dtype, kvc.device, token_to_kv_pool)


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], build)
