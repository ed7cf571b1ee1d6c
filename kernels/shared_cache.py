"""One GPU cache of host-homed K/V that every request shares, keyed by (logical slot, kv head).

The per-request hot buffers (:mod:`a2ats_sglang.kernels.hot_buffer`) give each request row its
own slots, so a server plans one buffer per row it may run and 32 questions over one document
fetch that document 32 times. Here a layer's cache is a flat pool of ``cells`` vectors (each one
kv head's K and V of one token; cell ``c`` is row ``base + c`` of the GPU KV tensors viewed as
``[slots·Hkv, d]``, the view the sparse attention indexes). Per layer:

- ``cached[slot·Hkv + g]`` (int32, −1: absent) names the cell holding kv head ``g`` of logical
  slot ``slot``; its last entry is a sentinel kept at −2 (masked compare-and-swaps point there);
- ``owner[c]`` is the key cell ``c`` holds (−1: none), ``used[c]`` the step that last read or
  filled it, and ``hand`` the clock's position (int64).

A step (``epoch``, one counter for all layers, advanced once per step) runs two launches per
layer, neither waiting on the host:

1. *lookup*: each pick whose key is cached writes its attention index and pins its cell for
   this step (``used = epoch``); misses are marked −1 in the index list;
2. *claim and copy*: each row takes cells for its misses from the shared clock
   (``atomic_add`` on the hand reserves candidates, ``atomic_xchg`` on ``used`` claims one that
   this step has not pinned), then ``atomic_cas(cached[key], −1, cell)``: the first request to
   miss a token this step fills it, a request losing the race reads the winner's cell. A winner
   invalidates the cell's previous key (only if that key still names the cell) and copies
   the K/V from pinned host memory (UVA).

A cell pinned this step is never claimed, and a token any pick of this step asked for was
either a hit (its cell pinned) or absent, so an eviction never takes a token the step reads.
Which cell a token lands in depends on the order of the atomics; the attention reads values,
not cells, so its inputs, their order and hence its bits do not. Writing a logical slot's K/V
anew must drop its keys (:func:`invalidate`): SGLang reuses freed slots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2ats_sglang.kernels.hot_buffer import copy_vectors

ABSENT: tl.constexpr = tl.constexpr(-1)  # a cached entry naming no cell
SENTINEL = -2  # the value of cached's last entry, which masked compare-and-swaps target
COPY_ROWS = 16  # vectors copied from the host at once: their K and V tiles stay in registers


@triton.jit
def _row(picks_ptr, counts_ptr, req_pool_ptr, indptr_ptr, row, num_kv_heads, stride_pr):
    b = row // num_kv_heads
    return (picks_ptr + row.to(tl.int64) * stride_pr, tl.load(counts_ptr + row), tl.load(req_pool_ptr + b).to(tl.int64),
            tl.load(indptr_ptr + row), row % num_kv_heads)


@triton.jit
def _lookup_kernel(
    picks_ptr, counts_ptr, req_to_token_ptr, req_pool_ptr, indptr_ptr, out_ptr,
    cached_ptr, used_ptr, epoch_ptr, stats_ptr, counters_ptr,
    num_kv_heads, base, homes, stride_pr, stride_rr,
    BLOCK: tl.constexpr, COUNT: tl.constexpr, HOMES: tl.constexpr,
):
    row = tl.program_id(0)
    pick_row, n, rid, dst, g = _row(picks_ptr, counts_ptr, req_pool_ptr, indptr_ptr, row, num_kv_heads, stride_pr)
    epoch = tl.load(epoch_ptr)
    hits = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        j = start + tl.arange(0, BLOCK)
        ok = j < n
        t = tl.load(pick_row + j, mask=ok, other=0)
        slot = tl.load(req_to_token_ptr + rid * stride_rr + t, mask=ok, other=0).to(tl.int64)
        if HOMES:  # a GPU-homed slot is read in place: kv head g of its row
            home = slot <= homes
            cell = tl.load(cached_ptr + (slot - homes) * num_kv_heads + g, mask=ok & ~home, other=-1)
            hit = ok & (cell >= 0)
            tl.store(out_ptr + dst + j, tl.where(home, slot * num_kv_heads + g, tl.where(hit, base + cell, -1)),
                     mask=ok)
        else:
            cell = tl.load(cached_ptr + slot * num_kv_heads + g, mask=ok, other=-1)
            hit = ok & (cell >= 0)
            tl.store(out_ptr + dst + j, tl.where(hit, base + cell, -1), mask=ok)
        tl.store(used_ptr + cell, tl.zeros([BLOCK], tl.int32) + epoch, mask=hit)
        hits += tl.sum(hit.to(tl.int32), axis=0)
    tl.store(stats_ptr + row * 2, hits)
    if COUNT:
        tl.atomic_add(counters_ptr, hits.to(tl.int64))


@triton.jit
def _claim_kernel(
    picks_ptr, counts_ptr, req_to_token_ptr, req_pool_ptr, indptr_ptr, out_ptr,
    cached_ptr, owner_ptr, used_ptr, hand_ptr, epoch_ptr, scratch_ptr, stats_ptr, counters_ptr,
    host_k_ptr, host_v_ptr, dev_k_ptr, dev_v_ptr,
    num_kv_heads, base, homes, cells, sentinel, dim, max_tries, pairs_off,
    stride_pr, stride_rr, stride_sr, stride_hk_s, stride_hk_h,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_COPY: tl.constexpr, COUNT: tl.constexpr,
):
    row = tl.program_id(0)
    pick_row, n, rid, dst, g = _row(picks_ptr, counts_ptr, req_pool_ptr, indptr_ptr, row, num_kv_heads, stride_pr)
    epoch = tl.load(epoch_ptr)
    scratch = scratch_ptr + row.to(tl.int64) * stride_sr
    need = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        j = start + tl.arange(0, BLOCK)
        need += tl.sum(((j < n) & (tl.load(out_ptr + dst + j, mask=j < n, other=0) < 0)).to(tl.int32), axis=0)

    # 1. cells this step has not pinned, from the shared clock: scratch[0, need)
    found = tl.zeros([], tl.int32)
    tries = 0
    while (found < need) & (tries < max_tries):
        first = tl.atomic_add(hand_ptr, BLOCK)  # candidates [first, first + BLOCK), no other program's
        c = ((first + tl.arange(0, BLOCK)) % cells).to(tl.int32)
        free = tl.load(used_ptr + c) != epoch
        want = free & (found + tl.cumsum(free.to(tl.int32), axis=0) - 1 < need)  # no more than needed
        # a claim fails only if the hand lapped the cache within this step and another row took the cell
        got = want & (tl.atomic_xchg(used_ptr + c, tl.zeros([BLOCK], tl.int32) + epoch, mask=want) != epoch)
        rank = found + tl.cumsum(got.to(tl.int32), axis=0) - 1
        tl.store(scratch + rank, c, mask=got)
        found += tl.sum(got.to(tl.int32), axis=0)
        tries += 1
    tl.debug_barrier()

    # 2. each miss takes the next cell; the first to miss a key this step fills it
    copies = tl.zeros([], tl.int32)
    n_miss = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        j = start + tl.arange(0, BLOCK)
        ok = j < n
        miss = ok & (tl.load(out_ptr + dst + j, mask=ok, other=0) < 0)
        rank = n_miss + tl.cumsum(miss.to(tl.int32), axis=0) - 1
        miss = miss & (rank < found)  # (the cache's sizing, or the scheduler's pick limit, keeps found = need)
        cell = tl.load(scratch + rank, mask=miss, other=0)
        t = tl.load(pick_row + j, mask=miss, other=0)
        # a miss is host-homed: its host row, slot − homes, is also its key's slot
        slot = tl.load(req_to_token_ptr + rid * stride_rr + t, mask=miss, other=homes).to(tl.int64) - homes
        key = slot * num_kv_heads + g
        prev = tl.atomic_cas(cached_ptr + tl.where(miss, key, sentinel), tl.where(miss, -1, 0), tl.where(miss, cell, 0))
        won = miss & (prev == -1)
        tl.store(out_ptr + dst + j, base + tl.where(won, cell, prev), mask=miss)
        old = tl.load(owner_ptr + cell, mask=won, other=-1).to(tl.int64)
        gone = won & (old >= 0)
        tl.atomic_cas(cached_ptr + tl.where(gone, old, sentinel), tl.where(gone, cell, 0), tl.where(gone, -1, 0))
        tl.store(owner_ptr + cell, key.to(tl.int32), mask=won)
        crank = copies + tl.cumsum(won.to(tl.int32), axis=0) - 1  # the pairs sit past the cells: no overlap
        tl.store(scratch + pairs_off + crank, cell, mask=won)
        tl.store(scratch + 2 * pairs_off + crank, slot.to(tl.int32), mask=won)
        copies += tl.sum(won.to(tl.int32), axis=0)
        n_miss += tl.sum(miss.to(tl.int32), axis=0)
    tl.debug_barrier()

    # 3. the winners' K/V from the host, on dense lanes
    d = tl.arange(0, BLOCK_D)
    for start in range(0, copies, BLOCK_COPY):
        i = start + tl.arange(0, BLOCK_COPY)
        ok = i < copies
        cell = tl.load(scratch + pairs_off + i, mask=ok, other=0).to(tl.int64)
        slot = tl.load(scratch + 2 * pairs_off + i, mask=ok, other=0).to(tl.int64)
        copy_vectors(host_k_ptr, host_v_ptr, dev_k_ptr, dev_v_ptr, slot * stride_hk_s + g * stride_hk_h,
                     (base + cell) * dim, ok, d, d < dim)
    tl.store(stats_ptr + row * 2 + 1, need)
    if COUNT:
        tl.atomic_add(counters_ptr + 1, need.to(tl.int64))
        tl.atomic_add(counters_ptr + 2, copies.to(tl.int64))


@triton.jit
def _invalidate_kernel(cached_ptr, loc_ptr, n, num_kv_heads, homes, BLOCK: tl.constexpr, HEADS_P2: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    slot = tl.load(loc_ptr + i, mask=i < n, other=0).to(tl.int64) - homes
    ok = (i < n) & ((slot > 0) | (homes == 0))  # GPU homes are never cached (without, slot 0 is host row 0)
    h = tl.arange(0, HEADS_P2)
    keys = slot[:, None] * num_kv_heads + h[None, :]
    tl.store(cached_ptr + keys, tl.full([BLOCK, HEADS_P2], ABSENT, tl.int32),
             mask=ok[:, None] & (h < num_kv_heads)[None, :])


def invalidate(cached: torch.Tensor, loc: torch.Tensor, num_kv_heads: int, homes: int = 0, block: int = 256) -> None:
    """Logical slots ``loc`` hold new K/V: none of their ``num_kv_heads`` kv heads is cached any
    more (slots up to ``homes``, GPU-homed, are never cached and are skipped). A cell that still names one of them keeps it as its owner, and losing the cell later
    leaves a newer entry alone, since only an entry naming that cell is cleared. One launch, no
    allocation (it runs in every layer's KV write, inside the decode graph)."""
    n = loc.shape[0]
    if n == 0:
        return
    assert cached.dtype == torch.int32 and cached.is_contiguous() and loc.is_contiguous()
    _invalidate_kernel[(triton.cdiv(n, block),)](cached, loc, n, num_kv_heads, homes, BLOCK=block,
                                                  HEADS_P2=triton.next_power_of_2(num_kv_heads))


def fetch_shared(
    picks: torch.Tensor, counts: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
    cached: torch.Tensor, owner: torch.Tensor, used: torch.Tensor, hand: torch.Tensor, epoch: torch.Tensor,
    scratch: torch.Tensor, host_k: torch.Tensor, host_v: torch.Tensor, dev_k: torch.Tensor, dev_v: torch.Tensor,
    base: int, indptr: torch.Tensor, out_indices: torch.Tensor, stats: torch.Tensor, rows: int,
    counters: torch.Tensor | None = None, homes: int = 0, block: int = 128,
) -> None:
    """Make every pick of rows ``r = b·Hkv + g < rows`` resident and write
    ``out_indices[indptr[r] + j]`` = its row of the GPU KV tensors viewed as ``[slots·Hkv, d]``.

    ``picks`` ``[rows_cap, width]`` int32 positions (``counts[r]`` of them, distinct), ``req_to_token``
    ``[R, ctx]`` logical slots. Slots ``1 … homes`` are GPU-homed: row ``slot`` of ``dev_k``/``dev_v``,
    read in place (neither a hit nor a miss); a slot ``s > homes`` is host row ``s − homes``, which
    is also its key's slot. One layer's ``cached`` ``[host rows·Hkv + 1]``, ``owner`` and ``used``
    ``[cells]`` int32 and ``hand`` ``[1]`` int64; ``epoch`` ``[1]`` int32, this step's number
    (shared by the layers). ``scratch`` ``[rows_cap, 3·m]`` int32, ``m ≥ width``. ``host_k``/``host_v``
    ``[host rows, Hkv, d]`` pinned, ``dev_k``/``dev_v`` ``[GPU slots, Hkv, d]`` contiguous; cell ``c``
    is row ``base + c`` of their ``[slots·Hkv, d]`` view, past the homes. ``stats[r] = (hits, misses)``;
    with ``counters`` (``[3]`` int64) the hits, the misses and the copies from host memory are added
    to it (fewer copies than misses: a key two requests miss in one step is copied once).
    The cells must outnumber the picks of a step (every pick pins one, so a miss always finds
    an unpinned cell on the clock); the caller guarantees it.
    """
    if rows == 0:
        return
    cells, width = owner.shape[0], picks.shape[1]
    num_kv_heads, dim = host_k.shape[1], host_k.shape[2]
    # the step's picks must be fewer than the cells: SharedCache's sizing or, with GPU homes, the
    # scheduler's pick limit guarantees it (a row's width is all that can be checked here)
    assert cells > width, f"{cells} cells cannot hold a row's {width} picks"
    assert cached.dtype == owner.dtype == used.dtype == torch.int32 and hand.dtype == torch.int64
    assert int(cached.shape[0]) == host_k.shape[0] * num_kv_heads + 1
    assert dev_k.is_contiguous() and dev_v.is_contiguous() and dev_k.dtype == host_k.dtype
    assert host_k.stride() == host_v.stride() and host_k.stride(2) == 1 and picks.stride(1) == 1
    assert scratch.shape[0] >= rows and scratch.shape[1] >= 3 * width, (scratch.shape, rows, width)
    assert out_indices.dtype == torch.int32 and stats.is_contiguous()
    assert base + cells <= dev_k.shape[0] * num_kv_heads and (homes == 0 or (homes + 1) * num_kv_heads <= base)
    common = (picks, counts, req_to_token, req_pool_indices, indptr, out_indices)
    count = counters is not None
    assert not count or counters.shape == (3,), "counters: hits, misses, copies"
    _lookup_kernel[(rows,)](
        *common, cached, used, epoch, stats, counters if count else stats,
        num_kv_heads, base, homes, picks.stride(0), req_to_token.stride(0), BLOCK=block, COUNT=count, HOMES=homes > 0,
    )
    _claim_kernel[(rows,)](
        *common, cached, owner, used, hand, epoch, scratch, stats, counters if count else stats,
        host_k, host_v, dev_k, dev_v,
        num_kv_heads, base, homes, cells, cached.shape[0] - 1, dim, rows * triton.cdiv(cells, block) + 1, scratch.shape[1] // 3,
        picks.stride(0), req_to_token.stride(0), scratch.stride(0), host_k.stride(0), host_k.stride(1),
        BLOCK=block, BLOCK_D=triton.next_power_of_2(dim), BLOCK_COPY=COPY_ROWS, COUNT=count,
        num_warps=8,  # 64 registers a thread on sm_90, none spilled (4 warps: 146)
    )
