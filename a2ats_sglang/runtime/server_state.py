"""What ``/server_info`` reports about the a2ats backend (``internal_states[i]["a2ats"]``).

A serving engineer asks a running server how its KV is split between HBM and host memory, what
the codes and the codebook cost, the decode budget, and (with ``--a2ats-offload``) how much of
the GPU goes to prefill staging and hot buffers and how often a pick is found there. The
``server_info`` patch calls :func:`describe` in the scheduler process; everything here is
plain numbers, read without waiting for the GPU.
"""

from __future__ import annotations

from typing import Any, Protocol


class _Plan(Protocol):
    logical_slots: int
    staging_tokens: int
    hot_tokens: int
    max_running: int
    cache_slots: int
    homes: int


def describe(decoder: Any, codebook: str | None, kv_tokens: int, free_tokens: int, plan: _Plan | None = None,
             host_bytes: int = 0, staging_in_use: int = 0, offload_totals: tuple[int, int, int, int] | None = None,
             bytes_per_copy: int = 0) -> dict[str, Any]:
    """The backend's state. ``kv_tokens``/``free_tokens``: SGLang's pool (logical slots in
    offload mode: the plan's GPU homes, then host rows); ``offload_totals``: hits, misses,
    copies from host memory and decode steps read so far (:class:`~a2ats_sglang.runtime.tiered.metrics.OffloadMetrics`)."""
    budget = decoder.budget
    layers, heads = decoder.codes.shape[0], decoder.codes.shape[2]
    out: dict[str, Any] = {
        "mode": "offload" if plan is not None else "gpu",
        "kv_capacity_tokens": ({"gpu": plan.homes, "host": kv_tokens - plan.homes} if plan is not None
                               else {"gpu": kv_tokens, "host": 0}),
        "kv_used_tokens": kv_tokens - free_tokens,
        "codes_bytes": decoder.codes.numel() * decoder.codes.element_size(),
        "codes_bytes_per_token": layers * heads * decoder.codes.element_size(),
        "codebook": {"path": codebook, "codewords": decoder.codebook_size,
                     "bytes": sum(t.numel() * t.element_size() for t in (decoder.proj, decoder.half_norm, decoder.decoded))},
        "budget": {"sinks": budget.sinks, "window": budget.window, "ratio": budget.ratio, "min": budget.minimum,
                   "max": budget.maximum, "static_width": decoder.width},
    }
    if plan is not None:
        hits, misses, copies, steps = offload_totals or (0, 0, 0, 0)
        out["offload"] = {
            "host_pool_bytes": host_bytes,
            "staging_tokens": plan.staging_tokens,
            "staging_used_tokens": staging_in_use,
            "cache": "shared" if plan.cache_slots else "buffers",
            "cache_slots": plan.cache_slots,
            "hot_buffers": 0 if plan.cache_slots else plan.max_running + 1,
            "hot_buffer_tokens": plan.hot_tokens,
            "max_running_requests": plan.max_running,
            "decode_steps": steps,
            "hot_hit_rate": hits / (hits + misses) if hits + misses else None,
            "fetched_bytes": copies * bytes_per_copy,
            "fetched_bytes_per_step": copies * bytes_per_copy / steps if steps else None,
        }
    return out
