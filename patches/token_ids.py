"""Refuse token ids outside the vocabulary before they reach the GPU.

Target: ``sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request``
(SGLang 0.5.17), which checks each request's length before it is sent to the scheduler.
SGLang 0.5.17 defines ``_validate_input_ids_in_vocab`` but never calls it, so ``input_ids``
holding an id past the vocabulary, or a negative one, reaches the embedding gather: the
out-of-bounds read fails the next CUDA call and takes the scheduler down (the H200 soak at
2dead40 died on ``[1, 2, vocab + 7]``, stock and a2ats alike). Here such a request gets a 400
whose message names the id and the range, and the server serves on.
"""

from __future__ import annotations

import sys
from typing import Any

TARGET = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
SIGNATURE = "(self, obj: 'Union[GenerateReqInput, EmbeddingReqInput]', input_ids: 'List[int]') -> 'None'"

_installed = False  # set by install_around


def out_of_vocabulary(input_ids: Any, vocab_size: int) -> int | None:
    """The first id outside ``[0, vocab_size)``, or None. ``min``/``max`` run in C, so a 128K
    prompt costs about a millisecond; only a bad prompt is scanned for which id it was."""
    if not input_ids:
        return None
    low, high = min(input_ids), max(input_ids)
    if 0 <= low and high < vocab_size:
        return None
    return next(i for i in input_ids if not 0 <= i < vocab_size)


def check(original, manager, obj, input_ids) -> None:
    original(manager, obj, input_ids)
    vocab_size = int(manager.model_config.vocab_size)
    bad = out_of_vocabulary(input_ids, vocab_size)
    if bad is not None:
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary [0, {vocab_size}).")


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], check)
