"""Align chunked-prefill cuts for the a2ats backend in deterministic mode, as SGLang does for
FlashInfer.

Target: ``sglang.srt.managers.scheduler.Scheduler.init_deterministic_inference_config`` (SGLang
0.5.17), which sets the scheduler's ``truncation_align_size`` from a table keyed by attention
backend name (``flashinfer``, ``triton``). Our prefill is FlashInfer's with the same fixed split
(``SGLANG_FLASHINFER_PREFILL_SPLIT_TILE_SIZE``), but the name ``a2ats`` is not in the table, so
with ``--enable-deterministic-inference`` a long prompt would be cut into chunks wherever the
batch's budget ended, and its outputs would depend on what else was batched with it. After the
original runs, an a2ats scheduler gets FlashInfer's alignment.
"""

from __future__ import annotations

import sys

TARGET = "sglang.srt.managers.scheduler.Scheduler.init_deterministic_inference_config"
SIGNATURE = "(self)"

FLASHINFER_SPLIT = ("SGLANG_FLASHINFER_PREFILL_SPLIT_TILE_SIZE", 4096)  # SGLang's own entry for flashinfer

_installed = False  # set by install_around


def align(original, scheduler) -> None:
    from sglang.srt.utils import get_int_env_var

    from a2ats_sglang.runtime.plugin import BACKEND_NAME

    original(scheduler)
    if scheduler.server_args.attention_backend == BACKEND_NAME and scheduler.truncation_align_size is None \
            and scheduler.server_args.enable_deterministic_inference:
        scheduler.truncation_align_size = get_int_env_var(*FLASHINFER_SPLIT)


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], align)
