"""Build offload mode's KV pool: logical slots backed by pinned host memory.

Target: ``sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_mha_kv_pool``
(SGLang 0.5.17), where the MHA token-to-KV pool is constructed with ``max_total_num_tokens``
slots. With ``--a2ats-offload`` that number is the host pool's logical slots; the pool built
instead is an :class:`~a2ats_sglang.runtime.tiered.pool.OffloadKVPool` whose GPU tensors hold
only the plan's staging and hot-buffer slots, with the host pool and staging attached.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

TARGET = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator._build_mha_kv_pool"
SIGNATURE = "(self, *, max_total_num_tokens: 'int', mha_pool_class: 'type', quant_method=None) -> 'KVCache'"

logger = logging.getLogger(__name__)
_installed = False  # set by install_around


def build(original, kvc, *, max_total_num_tokens: int, mha_pool_class: type, quant_method=None):
    from a2ats_sglang.runtime.tiered.plan import current_plan

    plan = current_plan()
    if plan is None:
        return original(kvc, max_total_num_tokens=max_total_num_tokens, mha_pool_class=mha_pool_class,
                        quant_method=quant_method)
    import torch

    from a2ats_sglang.runtime.tiered.host_pool import HostKVPool, HostPoolPlan, kv_bytes_per_token
    from a2ats_sglang.runtime.tiered.pool import OffloadKVPool
    from a2ats_sglang.runtime.tiered.plan import set_staging
    from a2ats_sglang.runtime.tiered.staging import Staging

    if quant_method is not None or kvc.kv_cache_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"--a2ats-offload keeps K/V in bf16/fp16, not {kvc.kv_cache_dtype}: use --kv-cache-dtype auto")
    if max_total_num_tokens != plan.logical_slots:
        raise RuntimeError(f"SGLang sized {max_total_num_tokens} logical slots, the offload plan {plan.logical_slots}")
    mc, layers = kvc.model_config, kvc.layer_info.num_effective_layers
    from a2ats_sglang.patches.pool_sizing import kv_heads_per_rank

    heads, dim = kv_heads_per_rank(mc), mc.head_dim
    logical = plan.logical_slots + 1  # slot 0 is SGLang's padding slot
    # host row r holds slot homes + r (row 0: the padding slot, or the last GPU home)
    host = HostKVPool(HostPoolPlan(plan.host_rows, kv_bytes_per_token(layers, heads, dim, kvc.kv_cache_dtype)),
                      layers, heads, dim, kvc.kv_cache_dtype)
    staging = Staging(logical, plan.staging_base, plan.staging_tokens, plan.hot_buffers,
                      mc.context_len + 4, kvc.device, homes=plan.homes)  # ReqToTokenPool's rows: this long (+4 spare)
    pool = original(kvc, max_total_num_tokens=plan.gpu_slots, quant_method=None,
                    mha_pool_class=partial(OffloadKVPool, host, staging, homes=plan.homes))
    pool.plan = plan
    set_staging(staging)  # the scheduler admits prefills against it (patches/staging_admission.py)
    logger.info("A²ATS offload: pinned host KV pool %.1f GiB, GPU KV tensors %d slots (%d of them homes)",
                host.nbytes / 2**30, plan.gpu_slots, plan.homes)
    return pool


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], build)
