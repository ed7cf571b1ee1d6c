"""Cap the request pool at the hot buffers offload mode planned.

Target: ``sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.resolve_max_num_reqs``
(SGLang 0.5.17), which turns the token capacity into the number of request-pool rows. With
``--a2ats-offload`` the capacity is the host pool's, far more than the GPU can give hot buffers
to; each row owns one hot buffer, so the rows are capped at the plan's ``max_running``.
"""

from __future__ import annotations

import logging
import sys

TARGET = "sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.resolve_max_num_reqs"
SIGNATURE = "(self, token_capacity: 'int') -> 'int'"

logger = logging.getLogger(__name__)
_installed = False  # set by install_around


def cap(original, kvc, token_capacity: int) -> int:
    from a2ats_sglang.runtime.tiered.plan import current_plan

    rows = original(kvc, token_capacity)
    plan = current_plan()
    if plan is None:
        return rows
    if rows > plan.max_running:
        why = "what the shared cache holds" if plan.shared else "one hot buffer each"
        logger.info("A²ATS offload: %d running requests (%s), not %d", plan.max_running, why, rows)
    return min(rows, plan.max_running)  # fewer (a tiny host pool): some hot buffers stay unused


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], cap)
