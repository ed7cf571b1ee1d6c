"""Align chunked-prefill cuts for the a2ats backend in deterministic mode, as SGLang does for
its Triton backend.

Target: ``sglang.srt.managers.scheduler.Scheduler.init_deterministic_inference_config`` (SGLang
0.5.17), which sets the scheduler's ``truncation_align_size`` from a table keyed by attention
backend name (``flashinfer``, ``triton``). In deterministic mode our extends run SGLang's
Triton backend's unified kernel (runtime/unified_extend.py), but the name ``a2ats`` is not in
the table, so a long prompt would be cut into chunks wherever the batch's budget ended. After
the original runs, an a2ats scheduler gets the Triton backend's alignment.
"""

from __future__ import annotations

import sys

TARGET = "sglang.srt.managers.scheduler.Scheduler.init_deterministic_inference_config"
SIGNATURE = "(self)"

TRITON_ALIGN = ("SGLANG_TRITON_PREFILL_TRUNCATION_ALIGN_SIZE", 4096)  # SGLang's own entry for triton

_installed = False  # set by install_around


def align(original, scheduler) -> None:
    from sglang.srt.utils import get_int_env_var

    from a2ats_sglang.runtime.plugin import BACKEND_NAME

    original(scheduler)
    if scheduler.server_args.attention_backend == BACKEND_NAME and scheduler.truncation_align_size is None \
            and scheduler.server_args.enable_deterministic_inference:
        scheduler.truncation_align_size = get_int_env_var(*TRITON_ALIGN)


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], align)
