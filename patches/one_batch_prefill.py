"""Prefill SGLang's one-batch benchmark in groups of requests, so that long batches fit.

Target: ``sglang.benchmark.one_batch.extend`` (SGLang 0.5.17), which prefills every request of
the batch in one forward. At batch 16 and 32K that is 524K tokens at once: on an H200 both
stock and a2ats run out of memory in the MLP (a 6 GiB allocation on top of a full KV pool).
The hook runs the original ``extend`` on consecutive groups of at most
``A2ATS_ONE_BATCH_PREFILL_TOKENS`` prompt tokens (default 65,536; one request per group if
a prompt is longer) and merges their batches with ``ScheduleBatch.merge_batch``, as SGLang's
scheduler merges prefilled requests into its running batch. The decode steps the benchmark
times then run on the whole batch, as before; the prefill latency it reports is the sum of
the groups'.

On demand (``ON_DEMAND``): the servers never import the benchmark, so :func:`install_all`
skips this module; ``a2ats_sglang.bench_one_batch`` and ``benchmarks.one_batch_stock`` install
it, so both sides of ``benchmarks.one_batch`` prefill alike.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

TARGET = "sglang.benchmark.one_batch.extend"
SIGNATURE = "(reqs, model_runner)"
ON_DEMAND = True
ENV = "A2ATS_ONE_BATCH_PREFILL_TOKENS"
DEFAULT_TOKENS = 65536

_installed = False  # set by install_around


def prefill_tokens() -> int:
    """Prompt tokens a prefill group holds at most (``A2ATS_ONE_BATCH_PREFILL_TOKENS``)."""
    raw = os.environ.get(ENV, str(DEFAULT_TOKENS))
    try:
        tokens = int(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a positive number of tokens") from None
    if tokens <= 0:
        raise ValueError(f"{ENV}={raw!r}: expected a positive number of tokens")
    return tokens


def groups(lengths: Sequence[int], tokens: int) -> list[range]:
    """Consecutive index ranges of ``lengths`` whose sums stay within ``tokens`` (a longer
    prompt gets a group of its own)."""
    out: list[range] = []
    start, held = 0, 0
    for i, n in enumerate(lengths):
        if i > start and held + n > tokens:
            out.append(range(start, i))
            start, held = i, 0
        held += n
    if lengths:
        out.append(range(start, len(lengths)))
    return out


def grouped_extend(original: Callable[..., Any], reqs: list, model_runner: Any) -> Any:
    """``original`` on each group of ``reqs``, the batches merged: ``(next_token_ids,
    next_token_logits, batch)`` over all the requests, in their order."""
    import torch

    parts = groups([len(r.origin_input_ids) for r in reqs], prefill_tokens())
    if len(parts) <= 1:
        return original(reqs, model_runner)
    ids, logits, batch = [], [], None
    for part in parts:
        next_ids, next_logits, b = original(reqs[part.start : part.stop], model_runner)
        ids.append(next_ids)
        logits.append(next_logits)
        if batch is None:
            batch = b
        else:
            batch.merge_batch(b)
    merged_logits = None if any(x is None for x in logits) else torch.cat(logits)
    return torch.cat(ids), merged_logits, batch


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], grouped_extend)
