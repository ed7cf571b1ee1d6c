"""A start-up warm-up that runs every kernel variant a2ats serves with, before the first user.

Triton compiles a kernel the first time it meets a new set of compile-time values: the encode
kernel's key tile follows the number of keys (16, 32 or 64 below 1,024 keys, a larger tile
from there), and any integer argument is specialised on whether it is a multiple of 16. SGLang's
own warm-up sends one short prompt, so the first request that brings, say, a batch of radix-cache
hits (32 questions over one document: their prefix tails are 512 keys) paid for compiling them
inside its time to first token. This warm-up, registered as SGLang's ``--warmups a2ats``
(the launchers add it), sends token-id requests that reach each variant: a cold prefill and a
decode that crosses encode groups, prefix hits one, two and four at a time, and prompts whose
key counts fall in every tile, each a multiple of 16 and not.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

NAME = "a2ats"
DOCUMENT = 300  # tokens of the prompt the prefix hits share
TIMEOUT_S = 300.0  # a wave that takes longer is given up (the server starts anyway)
PROMPT_SIZES = (7, 16, 24, 32, 48, 64, 100, 1024, 1100)  # keys an extend encodes, per tile and divisibility


def ids(seed: int, n: int) -> list[int]:
    """``n`` token ids that no other warm-up prompt starts with (so none is a radix hit by chance),
    all below 1,000: every vocabulary has them."""
    return [100 + (seed * 7 + i * 13) % 900 for i in range(n)]


def requests() -> list[list[tuple[list[int], int]]]:
    """Waves of (prompt, new tokens) sent together, one wave after the other."""
    doc = ids(1, DOCUMENT)
    waves = [[(doc, 40)]]  # cold prefill; 40 decode steps cross two encode groups
    for k in (1, 2, 4):  # prefix hits: their prefix tails are 16·k keys
        waves.append([(doc + ids(10 * k + i, 20 + i), 20) for i in range(k)])
    waves += [[(ids(100 + n, n), 2)] for n in PROMPT_SIZES]
    return waves


async def run(disaggregation_mode: str, tokenizer_manager: Any) -> None:
    """SGLang's warm-up signature (:mod:`sglang.srt.entrypoints.warmup`)."""
    if disaggregation_mode != "null":
        logger.info("A²ATS warm-up skipped: prefill/decode disaggregation")
        return
    from sglang.srt.managers.io_struct import GenerateReqInput

    async def one(prompt: list[int], new_tokens: int) -> None:
        req = GenerateReqInput(input_ids=prompt, sampling_params={"max_new_tokens": new_tokens, "temperature": 0.0,
                                                                  "ignore_eos": True})
        async for _ in tokenizer_manager.generate_request(req, None):
            pass

    context = int(getattr(tokenizer_manager, "context_len", 1 << 30))
    waves = [[(p, n) for p, n in w if len(p) + n < context] for w in requests()]
    start = time.monotonic()
    try:
        for wave in waves:
            await asyncio.wait_for(asyncio.gather(*(one(p, n) for p, n in wave)), TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - a warm-up that fails must not keep the server from serving
        logger.warning("A²ATS warm-up stopped (%s: %s); the first requests may compile kernels", type(e).__name__, e)
        return
    logger.info("A²ATS warm-up: %d requests in %d waves (cold prefill, decode, prefix hits, prompt sizes), %.1f s",
                sum(len(w) for w in waves), len(waves), time.monotonic() - start)


def register() -> None:
    """Make ``--warmups a2ats`` known to SGLang (its warm-up registry; idempotent)."""
    from sglang.srt.entrypoints.warmup import warmup

    warmup(NAME)(run)
