"""Every GPU byte the ``a2ats`` backend adds, computed before SGLang sizes its KV pool.

SGLang turns free memory into KV slots (``available_bytes // cell_size``); the backend adds a
code per slot (int16 per layer and kv head), the codebook tensors (encode projection fp32,
half norms fp32, decoded codewords bf16) and the decode graph's table/score/index buffers. The
``pool_sizing`` patch charges them there, so ``--mem-fraction-static`` keeps its meaning.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from a2ats_sglang.method.codebook import META_FILE
from a2ats_sglang.method.wrope import DistanceBuckets
from a2ats_sglang.runtime.config import A2ATSConfig
from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers

CODE_BYTES = 2  # int16 per (slot, layer, kv head)


@dataclass(frozen=True)
class Footprint:
    per_token: int  # bytes per KV slot
    fixed: int  # bytes independent of the pool size


def _meta(cfg: A2ATSConfig) -> dict:
    return {} if cfg.codebook is None else json.loads((Path(cfg.codebook) / META_FILE).read_text())


def codebook_size(cfg: A2ATSConfig) -> int:
    return int(_meta(cfg).get("codebook_size", 4096))


def resolve_budget(cfg: A2ATSConfig, window: int, sinks: int) -> Budget:
    """The decode budget: the flags over the codebook's calibration ``window`` and ``sinks``."""
    return Budget(sinks if cfg.sinks is None else cfg.sinks, window if cfg.window is None else cfg.window,
                  cfg.budget_ratio, cfg.budget_min, cfg.budget_max)


def decode_budget(cfg: A2ATSConfig) -> Budget:
    """The budget the backend will decode with, before its codebook is loaded."""
    meta = _meta(cfg)
    return resolve_budget(cfg, int(meta.get("window", 64)), int(meta.get("sinks", 8)))


def distance_buckets(cfg: A2ATSConfig, window: int, b: int, context_len: int) -> DistanceBuckets:
    """The WRoPE distance buckets the decoder scores with (``--a2ats-wrope``)."""
    return DistanceBuckets.single(window, b) if cfg.wrope == "single" else DistanceBuckets.log2(window, context_len)


def footprint(
    cfg: A2ATSConfig, num_layers: int, num_kv_heads: int, head_dim: int, context_len: int,
    graph_max_bs: int, size: int | None = None,
) -> Footprint:
    size = codebook_size(cfg) if size is None else size
    budget = decode_budget(cfg)
    width = budget.width(context_len)
    buckets = len(distance_buckets(cfg, budget.window, 0, context_len).edges)
    per_pair = size * (head_dim * 4 + 4 + head_dim * 2)
    scratch = SparseDecodeBuffers.nbytes(
        graph_max_bs, num_kv_heads, context_len, width, size, buckets, fetch=cfg.offload,
        layers=num_layers) if graph_max_bs else 0
    return Footprint(num_layers * num_kv_heads * CODE_BYTES, num_layers * num_kv_heads * per_pair + scratch)


@dataclass(frozen=True)
class OffloadFootprint:
    """GPU bytes of offload mode, by what they scale with."""

    per_context_token: int  # codes: every logical slot of every request keeps them on the GPU
    per_running_request: int  # its hot buffer (H slots of K/V, all layers) and the tables naming them
    stock_per_context_token: int  # what a GPU-resident KV cache spends instead


def offload_footprint(num_layers: int, num_kv_heads: int, head_dim: int, hot_tokens: int, kv_dtype_bytes: int = 2) -> OffloadFootprint:
    """Codes per context token; per running request a hot buffer of ``hot_tokens`` slots (each
    kv head keeps its own tokens in its column of the slots) plus its tables
    (:func:`hot_table_bytes`)."""
    kv_per_token = 2 * num_layers * num_kv_heads * head_dim * kv_dtype_bytes
    return OffloadFootprint(num_layers * num_kv_heads * CODE_BYTES,
                            hot_tokens * kv_per_token + hot_table_bytes(num_layers, num_kv_heads, hot_tokens), kv_per_token)


RUNNING_CAP = 256  # request rows offload mode plans at most, unless --max-running-requests asks more


class OffloadSizingError(ValueError):
    """An offload configuration the GPU cannot hold."""


@dataclass(frozen=True)
class OffloadPlan:
    """Where offload mode's GPU slots go: ``[0]`` SGLang's padding slot, then ``homes`` GPU homes
    (logical slots ``1 … homes``, read in place; ``--a2ats-gpu-homes``), prefill staging, then one
    hot buffer of ``hot_tokens`` slots per request-pool row (``max_running`` rows plus row 0,
    which CUDA-graph padding reads), or, with ``cache_slots``, one shared cache of that many
    slots (``--a2ats-offload-cache shared``). Logical slots above ``homes`` are host rows."""

    logical_slots: int  # what SGLang's allocator hands out: the GPU homes and the host pool's rows (or fewer)
    max_running: int  # request rows (each with its hot buffer, unless the cache is shared)
    hot_tokens: int
    staging_tokens: int
    cache_slots: int = 0  # the shared cache's GPU slots (each holds Hkv cells); 0: hot buffers
    homes: int = 0  # logical slots homed in GPU rows (1 … homes); the rest are host rows
    # the most top-K widths (each request's at its final length) the running requests may sum to,
    # so a step's picks always find cells (patches/staging_admission.py); 0: the cache holds every row's
    pick_limit: int = 0

    @property
    def shared(self) -> bool:
        return self.cache_slots > 0

    @property
    def host_rows(self) -> int:
        """Rows of the host pool: one per logical slot above the homes, and row 0 (slot
        ``homes``: SGLang's padding slot without homes, the last GPU home with them)."""
        return self.logical_slots - self.homes + 1

    @property
    def staging_base(self) -> int:
        return 1 + self.homes

    @property
    def hot_base(self) -> int:
        return 1 + self.homes + self.staging_tokens

    @property
    def hot_buffers(self) -> int:
        return self.max_running + 1

    @property
    def gpu_slots(self) -> int:
        return self.homes + self.staging_tokens + (self.cache_slots if self.shared else self.hot_buffers * self.hot_tokens)


def hot_table_bytes(num_layers: int, num_kv_heads: int, hot_tokens: int) -> int:
    """GPU bytes per request row besides its K/V slots: which token each (layer, kv head) holds
    in each slot and its clock hand (:class:`~a2ats_sglang.runtime.tiered.hot_buffers.HotBuffers`), and
    the row's slot ids. (The fetch's scratch is per graph row, in :class:`SparseDecodeBuffers`.)"""
    return 4 * num_layers * num_kv_heads * (hot_tokens + 1) + 4 * hot_tokens


def auto_running(host_slots: int, context_len: int, lo: int = 16, hi: int = 256) -> int:
    """Request rows when ``--max-running-requests`` is not given: twice as many as the host pool
    holds requests of the full context length (so prompts of half of it fill the pool), in
    ``[lo, hi]``. Fewer rows leave each hot buffer more of the GPU, so fewer picks miss."""
    return max(lo, min(hi, -(-2 * (host_slots - 1) // max(context_len, 1))))


def plan_offload(
    budget_bytes: int, kv_bytes_per_token: int, code_bytes_per_token: int, fixed_bytes: int, host_slots: int,
    width: int, context_len: int, staging_tokens: int, max_running: int | None = None, running_cap: int = RUNNING_CAP,
    table_bytes: Callable[[int], int] = lambda hot_tokens: 0,
) -> OffloadPlan:
    """Split the GPU's KV budget: codes (and the staging map) for every logical slot, fixed
    tensors, staging, then hot buffers: ``max_running`` request rows (:func:`auto_running` if not
    given) plus row 0, each as large as the rest of the budget allows, between the decode's
    ``width`` and ``context_len`` tokens, with ``table_bytes(hot_tokens)`` of tables. Hot buffers
    of the whole context leave room for more rows: then as many as fit, up to ``running_cap``.
    Logical slots are the host pool's (slot 0 is padding), fewer only if their codes would leave
    no room for one request."""
    per_logical = code_bytes_per_token + 4  # + the staging map entry

    def per_request(hot: int) -> int:
        return hot * kv_bytes_per_token + table_bytes(hot)

    room = budget_bytes - fixed_bytes - staging_tokens * kv_bytes_per_token
    if room < 2 * per_request(width) + per_logical * width:  # row 0 and one request
        raise OffloadSizingError(
            f"the GPU's KV budget ({budget_bytes / 2**30:.1f} GiB) does not hold the fixed tensors "
            f"({fixed_bytes / 2**30:.2f} GiB), prefill staging for {staging_tokens} tokens "
            f"({staging_tokens * kv_bytes_per_token / 2**30:.2f} GiB) and one hot buffer of {width} tokens"
        )
    logical = min(host_slots - 1, (room - 2 * per_request(width)) // per_logical)
    left = room - logical * per_logical
    rows = (auto_running(host_slots, context_len, hi=running_cap) if max_running is None else max_running) + 1
    slope = per_request(1) - per_request(0)  # per_request is affine in the hot size
    hot = max(width, min(context_len, (left // rows - per_request(0)) // slope))
    fit = left // per_request(hot) - 1  # row 0 is padding
    if max_running is None:
        running = min(fit, running_cap)
    elif max_running > fit:
        raise OffloadSizingError(
            f"--max-running-requests {max_running} needs {max_running} hot buffers of at least {width} tokens; "
            f"the GPU holds {fit} next to the codes of {logical} tokens"
        )
    else:
        running = max_running
    return OffloadPlan(int(logical), int(running), int(hot), staging_tokens)


SHARED_SLOTS_PER_PICK = 2  # cache slots the plan keeps per running request and top-K width, at least


def plan_shared_offload(
    budget_bytes: int, kv_bytes_per_token: int, code_bytes_per_token: int, fixed_bytes: int, host_slots: int,
    width: int, staging_tokens: int, num_layers: int, num_kv_heads: int, max_running: int | None = None,
    running_cap: int = RUNNING_CAP,
) -> OffloadPlan:
    """:func:`plan_offload` for one shared cache: every logical slot's codes, staging map entry
    and cache table entries, fixed tensors, staging, then the cache takes the rest. Running
    requests are not capped by buffers but by the cache's size: a step's picks must fit it with
    room to spare, :data:`SHARED_SLOTS_PER_PICK` top-K widths a request (and ``running_cap``)."""
    from a2ats_sglang.runtime.tiered.shared_cache import cell_table_bytes, table_bytes_per_slot

    per_logical = code_bytes_per_token + 4 + table_bytes_per_slot(num_layers, num_kv_heads)
    per_slot = kv_bytes_per_token + num_kv_heads * cell_table_bytes(num_layers)
    room = budget_bytes - fixed_bytes - staging_tokens * kv_bytes_per_token

    scratch_per_row = num_kv_heads * 3 * width * 4  # the claim's scratch, 3·width int32 (SharedCache)
    cache_per_row = SHARED_SLOTS_PER_PICK * width * per_slot
    # the logical slots leave room for one request and row 0: their cache and scratch
    logical = min(host_slots - 1, max(0, (room - 2 * (cache_per_row + scratch_per_row)) // per_logical))
    left = room - logical * per_logical
    # running requests and row 0 each take their cache and scratch; the cache then takes the rest
    running = min(running_cap, left // (cache_per_row + scratch_per_row) - 1) if max_running is None else max_running
    cache = max(0, left - (running + 1) * scratch_per_row) // per_slot
    fit = cache // (SHARED_SLOTS_PER_PICK * width) - 1  # row 0 is CUDA-graph padding
    if max_running is not None and max_running > fit:
        raise OffloadSizingError(
            f"--max-running-requests {max_running} needs a shared cache of {SHARED_SLOTS_PER_PICK * width} slots a "
            f"request; the GPU holds {cache} slots next to the codes of {logical} tokens, enough for {max(fit, 0)}"
        )
    if fit < 1 or running < 1:
        raise OffloadSizingError(
            f"the GPU's KV budget ({budget_bytes / 2**30:.1f} GiB) does not hold the fixed tensors "
            f"({fixed_bytes / 2**30:.2f} GiB), prefill staging for {staging_tokens} tokens and a shared cache "
            f"of {2 * SHARED_SLOTS_PER_PICK * width} tokens"
        )
    return OffloadPlan(int(logical), int(running), 0, staging_tokens, cache_slots=int(cache))


TIERED_CACHE_SHARE = 0.12  # of the KV budget, the shared cache's with GPU homes: a first rule, not measured
RESERVED_WIDTHS = 4  # full-context top-K widths the cache always holds: a chunked prompt, row 0 and two requests


def plan_tiered_offload(
    budget_bytes: int, kv_bytes_per_token: int, code_bytes_per_token: int, fixed_bytes: int, host_slots: int,
    width: int, staging_tokens: int, num_layers: int, num_kv_heads: int, running: int, max_homes: int | None = None,
    cache_share: float = TIERED_CACHE_SHARE,
) -> OffloadPlan:
    """Both tiers as one capacity (``--a2ats-gpu-homes``, at most ``max_homes``): every host row
    of the pool (``host_slots − 1``, row 0 aside) and the GPU homes that fit next to them.

    The GPU keeps the fixed tensors, staging, a shared cache of ``cache_share`` of the budget (at
    least :data:`RESERVED_WIDTHS` top-K widths of the whole context, ``width``, twice over), the
    claim scratch of ``running`` request rows and row 0, every logical slot's codes and
    staging-map entry and every host row's cache-table entry; the rest of HBM becomes homes,
    each its K/V plus its codes and map entry. The cache is not sized for every row at the
    whole context: the scheduler admits requests while their top-K widths (at their final
    lengths) sum to at most ``pick_limit``, half the cache less a chunked prompt's and row 0's
    widths, so a step's picks always find cells and the cache keeps as much again from earlier
    steps. Picks of GPU-homed tokens take no cells, so this bound is loose."""
    from a2ats_sglang.runtime.tiered.shared_cache import cell_table_bytes, table_bytes_per_slot

    if running < 1:
        raise OffloadSizingError(f"{running} running requests")
    host = host_slots - 1
    per_logical = code_bytes_per_token + 4  # codes and the staging map entry, in both tiers
    per_slot = kv_bytes_per_token + num_kv_heads * cell_table_bytes(num_layers)
    cache = max(SHARED_SLOTS_PER_PICK * width * RESERVED_WIDTHS, int(cache_share * budget_bytes) // per_slot)
    scratch = (running + 1) * num_kv_heads * 3 * width * 4  # the claim's, 3·width int32 a row (SharedCache)
    room = (budget_bytes - fixed_bytes - staging_tokens * kv_bytes_per_token - cache * per_slot - scratch
            - host * (per_logical + table_bytes_per_slot(num_layers, num_kv_heads)))
    homes = room // (kv_bytes_per_token + per_logical)
    if max_homes is not None:
        homes = min(homes, max_homes)
    if homes < 0:
        raise OffloadSizingError(
            f"the GPU's KV budget ({budget_bytes / 2**30:.1f} GiB) does not hold the fixed tensors "
            f"({fixed_bytes / 2**30:.2f} GiB), prefill staging for {staging_tokens} tokens, a shared cache of "
            f"{cache} tokens ({cache * per_slot / 2**30:.2f} GiB), {running} request rows and the codes of {host} host "
            "rows: lower --a2ats-host-kv-gb or --max-running-requests"
        )
    return OffloadPlan(int(homes + host), running, 0, staging_tokens, cache_slots=int(cache), homes=int(homes),
                       pick_limit=int(cache // SHARED_SLOTS_PER_PICK - 2 * width))
