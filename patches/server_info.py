"""Report the a2ats backend in ``/server_info``.

Target: ``sglang.srt.managers.scheduler.Scheduler.get_internal_state`` (SGLang 0.5.17), which
builds each scheduler's entry of ``/server_info``'s ``internal_states``. With the ``a2ats``
backend that entry gains ``"a2ats"``: the KV capacity of each tier, the codes' and codebook's
bytes, the decode budget and, in offload mode, staging, hot buffers, hit rate and bytes fetched
(:mod:`a2ats_sglang.runtime.server_state`). Other backends' entries are left as they are.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

TARGET = "sglang.srt.managers.scheduler.Scheduler.get_internal_state"
SIGNATURE = "(self, recv_req: sglang.srt.managers.io_struct.GetInternalStateReq)"

_installed = False  # set by install_around


def a2ats_backend(scheduler: Any) -> Any | None:
    """The scheduler's a2ats attention backend (the decode side of a hybrid one), if any.

    The backend itself is tried first: FlashInfer's backend, which ours extends, has a
    ``decode_backend`` attribute too, the string ``"fa2"``."""
    backend = getattr(getattr(getattr(scheduler, "tp_worker", None), "model_runner", None), "attn_backend", None)
    for candidate in (backend, getattr(backend, "decode_backend", None)):
        if hasattr(candidate, "a2ats_state"):
            return candidate
    return None


def add_state(original, scheduler, recv_req):
    out = original(scheduler, recv_req)  # GetInternalStateReqOutput(internal_state=dict)
    backend = a2ats_backend(scheduler)
    if backend is not None:
        try:
            state = backend.a2ats_state(scheduler.token_to_kv_pool_allocator.available_size())
        except Exception as e:  # noqa: BLE001 - a report must not take /server_info down with it
            logger.exception("A²ATS: could not describe the backend for /server_info")
            state = {"error": f"{type(e).__name__}: {e}"}
        out.internal_state["a2ats"] = state
    return out


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], add_state)
