"""Offload mode's per-step KV fetch: the picked tokens of each (request, kv head) into its hot buffer.

With the full KV cache in pinned host memory, each request owns ``H`` slots of the GPU KV
tensor (its hot buffer); every kv head of the request keeps its own ``H`` resident tokens in its
own column of those slots (the pool viewed as ``[slots·Hkv, 1, d]``, as the sparse decode reads
it). Per layer and step, :func:`fetch_hot` looks each hot slot's token up among the step's picks
(hits stay), copies the misses' K/V from host memory into slots whose tokens were not picked
(taken in clock order from a per-row hand, so a slot that just missed is not the next victim),
and writes the attention indices of the row in pick order, as the GPU-resident path does: the
attention then reads the same K/V values in the same order and returns the same bits.

Membership is tagged in the row's score buffer, which the step no longer needs once the top-K
has run: pick ``j``'s column is set to ``−(j + 1)·2¹⁰⁰`` (exact in float32, far below any score),
then the picked columns found resident to ``−2¹²⁷`` (a hit). Pick tags lie in
``[−2¹²⁴, −2¹⁰⁰]``; scores are finite or ``+inf``, so no score passes for either tag, and even a
``−inf`` score could neither pose as a pick nor keep a slot. One program
per row, no atomics, no allocation, no host synchronisation: it runs under the decode graph.
The host pool is read in place through its device mapping (UVA, pinned memory); on the CPU
(Triton's interpreter) it is ordinary memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


PICK_TAG = 2.0**100  # pick j is tagged -(j + 1)·PICK_TAG: exact in float32 for j < 2^24
HIT_TAG = -(2.0**127)  # a picked column found resident (below every pick tag, above -inf)


@triton.jit
def copy_vectors(host_k_ptr, host_v_ptr, dev_k_ptr, dev_v_ptr, src, dst, ok, d, d_ok):
    """K and V of each lane's vector (one kv head of one token): elements ``src[i] + d`` of the
    host pool to ``dst[i] + d`` on the GPU, for the lanes ``ok``."""
    m2 = ok[:, None] & d_ok[None, :]
    src2 = src[:, None] + d[None, :]
    dst2 = dst[:, None] + d[None, :]
    tl.store(dev_k_ptr + dst2, tl.load(host_k_ptr + src2, mask=m2), mask=m2)
    tl.store(dev_v_ptr + dst2, tl.load(host_v_ptr + src2, mask=m2), mask=m2)


@triton.jit
def _fetch_kernel(
    picks_ptr, counts_ptr, scores_ptr, req_to_token_ptr, req_pool_ptr, seq_lens_ptr,
    hot_slots_ptr, hot_tokens_ptr, hand_ptr, victims_ptr,
    host_k_ptr, host_v_ptr, dev_k_ptr, dev_v_ptr,
    indptr_ptr, out_ptr, stats_ptr, counters_ptr,
    num_kv_heads, hot_size, dim, pairs_off,
    stride_pr, stride_sr, stride_rr, stride_hs, stride_ht, stride_vr,
    stride_hk_s, stride_hk_h, stride_dk_s, stride_dk_h,
    BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, TAG: tl.constexpr, HIT: tl.constexpr, COUNT: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // num_kv_heads
    g = row % num_kv_heads
    rid = tl.load(req_pool_ptr + b).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    n = tl.load(counts_ptr + row)
    pick_row = picks_ptr + row.to(tl.int64) * stride_pr
    score_row = scores_ptr + row.to(tl.int64) * stride_sr
    tokens_row = hot_tokens_ptr + (rid * num_kv_heads + g) * stride_ht
    slots_row = hot_slots_ptr + rid * stride_hs
    victims_row = victims_ptr + row.to(tl.int64) * stride_vr
    dst = tl.load(indptr_ptr + row)

    # 1. tag pick j's column with -(j + 1)·2^100
    for start in range(0, n, BLOCK):
        j = start + tl.arange(0, BLOCK)
        t = tl.load(pick_row + j, mask=j < n, other=0)
        tl.store(score_row + t, (j + 1).to(tl.float32) * -TAG, mask=j < n)
    tl.debug_barrier()

    # 2. hot slots holding a picked token are hits: their index goes to the pick's place
    n_hit = tl.zeros([], tl.int32)
    for start in range(0, hot_size, BLOCK_H):
        h = start + tl.arange(0, BLOCK_H)
        t_h = tl.load(tokens_row + h, mask=h < hot_size, other=-1)
        held = (h < hot_size) & (t_h >= 0) & (t_h < seq_len)
        tag = tl.load(score_row + t_h, mask=held, other=0.0)
        hit = held & (tag <= -0.5 * TAG) & (tag >= -16777216.0 * TAG)  # a pick tag: j + 1 ≤ 2^24
        j_h = (tag * (-1.0 / TAG)).to(tl.int32) - 1
        slot_h = tl.load(slots_row + h, mask=hit, other=0)
        tl.store(out_ptr + dst + j_h, slot_h * num_kv_heads + g, mask=hit)
        tl.store(score_row + t_h, tl.full([BLOCK_H], HIT, tl.float32), mask=hit)
        n_hit += tl.sum(hit.to(tl.int32), axis=0)
    tl.debug_barrier()

    # 3. every other slot is a victim, in clock order from the hand; the misses need n - n_hit
    hand = tl.load(hand_ptr + rid * num_kv_heads + g)
    need = n - n_hit
    found = tl.zeros([], tl.int32)
    start = 0
    while (start < hot_size) & (found < need):
        h = start + tl.arange(0, BLOCK_H)
        hh = (hand + h) % hot_size
        t_hh = tl.load(tokens_row + hh, mask=h < hot_size, other=-1)
        held_hh = (h < hot_size) & (t_hh >= 0) & (t_hh < seq_len)
        kept = held_hh & (tl.load(score_row + t_hh, mask=held_hh, other=0.0) == HIT)
        free = (h < hot_size) & ~kept
        rank = found + tl.cumsum(free.to(tl.int32), axis=0) - 1
        tl.store(victims_row + rank, hh, mask=free & (rank < need))
        found += tl.sum(free.to(tl.int32), axis=0)
        start += BLOCK_H
    tl.debug_barrier()

    # 4. misses (picks still tagged) take the victims in order; each miss's (GPU slot, logical
    #    slot) pair goes to the scratch first, so the host reads in 5. run on dense lanes
    #    (scattered misses on masked lanes left too few reads in flight over PCIe)
    if need > 0:  # the hand moves past the last slot filled
        tl.store(hand_ptr + rid * num_kv_heads + g, (tl.load(victims_row + need - 1) + 1) % hot_size)
    tl.debug_barrier()
    n_miss = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        j = start + tl.arange(0, BLOCK)
        t = tl.load(pick_row + j, mask=j < n, other=0)
        miss = (j < n) & (tl.load(score_row + t, mask=j < n, other=0.0) != HIT)
        rank = n_miss + tl.cumsum(miss.to(tl.int32), axis=0) - 1
        victim = tl.load(victims_row + rank, mask=miss, other=0)
        slot = tl.load(slots_row + victim, mask=miss, other=0)
        logical = tl.load(req_to_token_ptr + rid * stride_rr + t, mask=miss, other=0)
        tl.store(tokens_row + victim, t, mask=miss)
        tl.store(out_ptr + dst + j, slot * num_kv_heads + g, mask=miss)
        tl.debug_barrier()  # every victim of this block read before the pairs overwrite them
        tl.store(victims_row + rank, slot, mask=miss)
        tl.store(victims_row + pairs_off + rank, logical, mask=miss)
        n_miss += tl.sum(miss.to(tl.int32), axis=0)
    tl.debug_barrier()

    # 5. copy the misses' K/V from the host
    d = tl.arange(0, BLOCK_D)
    for start in range(0, n_miss, BLOCK):
        i = start + tl.arange(0, BLOCK)
        ok = i < n_miss
        slot = tl.load(victims_row + i, mask=ok, other=0).to(tl.int64)
        logical = tl.load(victims_row + pairs_off + i, mask=ok, other=0).to(tl.int64)
        copy_vectors(host_k_ptr, host_v_ptr, dev_k_ptr, dev_v_ptr, logical * stride_hk_s + g * stride_hk_h,
                     slot * stride_dk_s + g * stride_dk_h, ok, d, d < dim)
    tl.store(stats_ptr + row * 2, n_hit)
    tl.store(stats_ptr + row * 2 + 1, n_miss)
    if COUNT:  # running totals (integer atomics: the sums do not depend on the order)
        tl.atomic_add(counters_ptr, n_hit.to(tl.int64))
        tl.atomic_add(counters_ptr + 1, n_miss.to(tl.int64))


def fetch_hot(
    picks: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor, req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, hot_slots: torch.Tensor, hot_tokens: torch.Tensor,
    hand: torch.Tensor, victims: torch.Tensor, host_k: torch.Tensor, host_v: torch.Tensor,
    dev_k: torch.Tensor, dev_v: torch.Tensor, indptr: torch.Tensor, out_indices: torch.Tensor,
    stats: torch.Tensor, rows: int, block: int = 128, counters: torch.Tensor | None = None, block_h: int = 1024,
) -> None:
    """Make every picked token of rows ``r = b·Hkv + g < rows`` resident and write their indices.

    ``picks`` ``[rows_cap, width]`` int32 token positions (``counts[r]`` of them, distinct,
    each ``< seq_lens[b]``, as the top-K writes them); ``scores`` ``[rows_cap, L]`` float32, the
    step's scores (finite below the length, but for ``+inf`` ones that are all picked), used as
    scratch: its picked columns are overwritten. A request's ``hot_tokens`` rows must be −1
    when its pool row is handed to it.
    ``req_to_token`` ``[R, ctx]`` logical slots; ``hot_slots`` ``[R, H]`` int32, the GPU slots of
    each request's hot buffer (``H ≥ max counts``); ``hot_tokens`` ``[R, Hkv, H]`` int32, the
    token each (request, kv head) holds there (−1: none; this layer's); ``hand`` ``[R, Hkv]``
    int32 clock hands; ``victims`` ``[rows_cap, 2·m]`` int32 scratch, ``m ≥ min(H, width)``. ``host_k``/``host_v``
    ``[logical slots, Hkv, d]`` (pinned), ``dev_k``/``dev_v`` ``[GPU slots, Hkv, d]``, same
    dtype. Writes ``out_indices[indptr[r] + j]`` = GPU slot·Hkv + g of pick ``j`` and
    ``stats[r] = (hits, misses)`` (``[rows_cap, 2]`` int32), and adds them to ``counters``
    (``[2]`` int64, running hits and misses) if given.
    """
    if rows == 0:
        return
    hot_size = hot_slots.shape[1]
    num_kv_heads, dim = host_k.shape[1], host_k.shape[2]
    assert hot_tokens.shape[1:] == (num_kv_heads, hot_size) and hot_tokens.is_contiguous() and hand.is_contiguous()
    assert host_k.dtype == dev_k.dtype and host_k.stride() == host_v.stride() and dev_k.stride() == dev_v.stride()
    assert host_k.stride(2) == 1 and dev_k.stride(2) == 1 and scores.stride(1) == 1 and picks.stride(1) == 1
    assert victims.shape[1] >= 2 * min(hot_size, picks.shape[1]) and out_indices.dtype == torch.int32
    assert stats.dtype == torch.int32 and stats.is_contiguous() and stats.shape[1] == 2
    assert counters is None or (counters.dtype == torch.int64 and counters.shape == (2,))
    _fetch_kernel[(rows,)](
        picks, counts, scores, req_to_token, req_pool_indices, seq_lens,
        hot_slots, hot_tokens, hand, victims,
        host_k, host_v, dev_k, dev_v,
        indptr, out_indices, stats, stats if counters is None else counters,
        num_kv_heads, hot_size, dim, victims.shape[1] // 2,
        picks.stride(0), scores.stride(0), req_to_token.stride(0), hot_slots.stride(0), hot_tokens.stride(1),
        victims.stride(0),
        host_k.stride(0), host_k.stride(1), dev_k.stride(0), dev_k.stride(1),
        BLOCK=block, BLOCK_H=min(block_h, triton.next_power_of_2(hot_size)), BLOCK_D=triton.next_power_of_2(dim), TAG=PICK_TAG, HIT=HIT_TAG,
        COUNT=counters is not None,
    )


@triton.jit
def _copy_rows_kernel(
    src_k_ptr, src_v_ptr, src_idx_ptr, dst_k_ptr, dst_v_ptr, dst_idx_ptr, home_k_ptr, home_v_ptr, n, row_elems,
    stride_s, stride_d, stride_home, homes,
    GATHER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, HOMES: tl.constexpr,
    SKIP_IN_PLACE: tl.constexpr,
):
    """``HOMES`` 1: the source index is a logical slot, read from its GPU home (``home_*``, slots
    up to ``homes``) or its host row (``src_*``, row slot − homes); 2: the same for the destination.
    ``SKIP_IN_PLACE``: the source is the homes' tensor, so a homed row copied onto itself is skipped."""
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    ok = (i < n)[:, None] & (e < row_elems)[None, :]
    if GATHER:
        src_row = tl.load(src_idx_ptr + i, mask=i < n, other=0).to(tl.int64)
    else:
        src_row = i.to(tl.int64)
    dst_row = tl.load(dst_idx_ptr + i, mask=i < n, other=0).to(tl.int64)
    src_k, src_v = src_k_ptr + src_row * stride_s, src_v_ptr + src_row * stride_s
    dst_k, dst_v = dst_k_ptr + dst_row * stride_d, dst_v_ptr + dst_row * stride_d
    if HOMES == 1:
        home = src_row <= homes
        src_k = tl.where(home, home_k_ptr + src_row * stride_home, src_k_ptr + (src_row - homes) * stride_s)
        src_v = tl.where(home, home_v_ptr + src_row * stride_home, src_v_ptr + (src_row - homes) * stride_s)
    if HOMES == 2:
        home = dst_row <= homes
        if SKIP_IN_PLACE:
            ok = ok & ~(home & (src_row == dst_row))[:, None]
        dst_k = tl.where(home, home_k_ptr + dst_row * stride_home, dst_k_ptr + (dst_row - homes) * stride_d)
        dst_v = tl.where(home, home_v_ptr + dst_row * stride_home, dst_v_ptr + (dst_row - homes) * stride_d)
    tl.store(dst_k[:, None] + e[None, :], tl.load(src_k[:, None] + e[None, :], mask=ok), mask=ok)
    tl.store(dst_v[:, None] + e[None, :], tl.load(src_v[:, None] + e[None, :], mask=ok), mask=ok)


def _copy_rows(src_k: torch.Tensor, src_v: torch.Tensor, src_idx: torch.Tensor | None, dst_k: torch.Tensor,
               dst_v: torch.Tensor, dst_idx: torch.Tensor, block_n: int, block_e: int,
               homes: int = 0, home_kv: tuple[torch.Tensor, torch.Tensor] | None = None, home_side: int = 0) -> None:
    """``dst[dst_idx[i]] = src[src_idx[i]]`` (``src[i]`` without ``src_idx``) for K and V, each
    token's ``Hkv·d`` values contiguous in both. With ``homes``, the indices of side
    ``home_side`` (1: source, 2: destination) are logical slots: up to ``homes`` rows of
    ``home_kv`` (the GPU homes), above it row slot − homes of that side's tensors."""
    n = dst_idx.shape[0]
    if n == 0:
        return
    row_elems = src_k.shape[1] * src_k.shape[2]
    home_k, home_v = home_kv if homes else (dst_k, dst_v)
    for t in (src_k, dst_k, home_k):
        assert t.stride(1) == t.shape[2] and t.stride(2) == 1, "each token's values must be contiguous"
    assert src_k.stride() == src_v.stride() and dst_k.stride() == dst_v.stride() and src_k.dtype == dst_k.dtype
    assert dst_k.shape[1:] == src_k.shape[1:] and dst_v.shape[1:] == src_v.shape[1:]
    assert home_k.stride() == home_v.stride() and home_k.shape[1:] == src_k.shape[1:] and home_k.dtype == src_k.dtype
    assert not homes or home_side in (1, 2)
    grid = (triton.cdiv(n, block_n), triton.cdiv(row_elems, block_e))
    _copy_rows_kernel[grid](
        src_k, src_v, dst_idx if src_idx is None else src_idx, dst_k, dst_v, dst_idx, home_k, home_v, n, row_elems,
        src_k.stride(0), dst_k.stride(0), home_k.stride(0), homes,
        GATHER=src_idx is not None, BLOCK_N=block_n, BLOCK_E=min(block_e, triton.next_power_of_2(row_elems)),
        HOMES=home_side if homes else 0, SKIP_IN_PLACE=bool(homes) and src_idx is not None
        and home_k.data_ptr() == src_k.data_ptr(),
        num_warps=8,  # sm_90, 16×1024 tiles: no spills at 8 (4 warps spilled 144 bytes a thread before homes, 8 after)
    )


def store_to_host(
    k: torch.Tensor, v: torch.Tensor, loc: torch.Tensor, host_k: torch.Tensor, host_v: torch.Tensor,
    rows: torch.Tensor | None = None, block_n: int = 16, block_e: int = 1024,
    homes: int = 0, home_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """``host_k[loc[i]] = k[i]`` (``k[rows[i]]`` with ``rows``) and the same for ``v``: new
    tokens' K/V written through to the pinned host pool by the GPU itself (no host
    synchronisation, so also inside the decode graph); ``rows`` reads them from GPU slots instead
    (an extend's staged K/V, copied on a side stream). With ``homes``, each token goes to its
    home: slots up to ``homes`` to that row of ``home_kv`` (the GPU KV tensors), slot ``s`` above
    to host row ``s − homes``.

    ``k``/``v`` ``[n or slots, Hkv, d]`` with each token's ``Hkv·d`` values contiguous, ``loc``
    ``[n]`` logical slots, ``host_k``/``host_v`` ``[slots, Hkv, d]`` contiguous per slot, same dtype.
    """
    assert (rows is not None or k.shape[0] == loc.shape[0]) and k.shape == v.shape
    assert rows is None or rows.shape == loc.shape
    _copy_rows(k, v, rows, host_k, host_v, loc, block_n, block_e, homes, home_kv, home_side=2)


def load_from_host(
    host_k: torch.Tensor, host_v: torch.Tensor, logical: torch.Tensor, dev_k: torch.Tensor, dev_v: torch.Tensor,
    gpu: torch.Tensor, block_n: int = 16, block_e: int = 1024, homes: int = 0,
) -> None:
    """``dev_k[gpu[i]] = host_k[logical[i]]`` and the same for V: a cached prefix's K/V read from
    the pinned host pool into GPU slots (prefill staging), by the GPU, without host sync. With
    ``homes``, slots up to it are read from their GPU homes, rows of ``dev_k``/``dev_v`` too, and
    slot ``s`` above from host row ``s − homes``."""
    assert logical.shape == gpu.shape
    _copy_rows(host_k, host_v, logical, dev_k, dev_v, gpu, block_n, block_e, homes, (dev_k, dev_v), home_side=1)
