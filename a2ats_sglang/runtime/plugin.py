"""Getting the ``a2ats`` attention backend into every SGLang process that needs it.

SGLang 0.5.17 starts its scheduler with ``spawn``, so registrations made in the launcher are
lost there. Three routes reach it, all ending in :func:`install`:

- our launchers pass :func:`run_scheduler_process` as ``run_scheduler_process_func``; it is
  pickled by reference, so the scheduler imports this module and installs before starting;
- the ``sglang.srt.plugins`` entry point :func:`register`, which SGLang's ``load_plugins()``
  calls in the engine process and at the top of ``run_scheduler_process`` (this covers
  ``sgl.Engine`` and ``bench_offline_throughput``); gated by ``A2ATS_SGLANG_ENABLE=1`` because
  every SGLang process on the machine discovers it, stock servers included;
- ``bench_one_batch`` builds its ModelRunner without ``load_plugins()``; our wrapper installs
  at import, which also runs in its spawned ``__mp_main__`` children.

This module must stay import-light: SGLang imports it in every process to find ``register``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from a2ats_sglang.runtime.config import enabled

if TYPE_CHECKING:
    from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
    from sglang.srt.model_executor.model_runner import ModelRunner

BACKEND_NAME = "a2ats"
ENTRY_POINT_GROUP = "sglang.srt.plugins"
ENTRY_POINT_NAME = "a2ats"  # the name SGLANG_PLUGINS must list when it is set

logger = logging.getLogger(__name__)
_installed = False


def create_a2ats_backend(runner: ModelRunner) -> AttentionBackend:
    """``ATTENTION_BACKENDS["a2ats"]``: SGLang calls it with the ModelRunner in the scheduler."""
    from a2ats_sglang.runtime.backend import A2ATSAttnBackend

    return A2ATSAttnBackend(runner)


def install() -> None:
    """Register the ``a2ats`` backend, offload mode's radix cache and the ``a2ats`` warm-up with
    SGLang and apply our patches. Idempotent.

    In the launcher this must run before SGLang parses its flags, so argparse accepts
    ``--attention-backend a2ats`` (the choices list is read when the parser is built).
    """
    global _installed
    if _installed:
        return
    from sglang.srt.layers.attention.attention_registry import (
        register_attention_backend,
    )
    from sglang.srt.server_args import (
        ATTENTION_BACKEND_CHOICES,
        DETERMINISTIC_ATTENTION_BACKEND_CHOICES,
        RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND,
        add_attention_backend_choices,
        add_deterministic_attention_backend_choices,
        add_radix_supported_deterministic_attention_backend_choices,
    )

    from a2ats_sglang.patches import install_all

    if BACKEND_NAME not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([BACKEND_NAME])
    # --enable-deterministic-inference: FlashInfer's decode settings (tensor cores, fixed split)
    # reach our plan, and selection has no float atomics, so the backend qualifies
    if BACKEND_NAME not in DETERMINISTIC_ATTENTION_BACKEND_CHOICES:
        add_deterministic_attention_backend_choices([BACKEND_NAME])
    # ... with the radix cache kept on (SGLang turns it off for FlashInfer): deterministic mode
    # runs our extends through SGLang's Triton backend's unified kernel (unified_extend.py), so
    # a row after a prefix hit is computed as in a cold prefill, however short the continuation
    if BACKEND_NAME not in RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND:
        add_radix_supported_deterministic_attention_backend_choices([BACKEND_NAME])
    register_attention_backend(BACKEND_NAME)(create_a2ats_backend)
    from a2ats_sglang.runtime.tiered.radix import register as register_radix_cache

    register_radix_cache()
    from a2ats_sglang.runtime.warmup import register as register_warmup

    register_warmup()
    install_all()
    _installed = True
    logger.debug("a2ats_sglang installed into SGLang")


def register() -> None:
    """The ``sglang.srt.plugins`` entry point: installs only when ``A2ATS_SGLANG_ENABLE=1``."""
    if enabled():
        install()


def entry_point_installed() -> bool:
    """Whether SGLang's ``load_plugins()`` can find :func:`register` (needs ``pip install``)."""
    from importlib.metadata import entry_points

    return any(
        ep.name == ENTRY_POINT_NAME and ep.value == f"{__name__}:register"
        for ep in entry_points(group=ENTRY_POINT_GROUP)
    )


def run_scheduler_process(*args: Any, **kwargs: Any) -> Any:
    """SGLang's ``run_scheduler_process`` after :func:`install`, for ``run_scheduler_process_func``.

    Module-level so that spawn pickles it by reference: the scheduler process imports this
    module to unpickle it, before any SGLang model code runs.
    """
    install()
    from sglang.srt.managers.scheduler import run_scheduler_process as stock

    return stock(*args, **kwargs)
