"""Per-row top-K of token scores, and the KV-pool indices of the picked tokens.

Rows are (request, kv head) pairs ``r = b·Hkv + g``. :func:`topk_rows` is a radix select: the
scores' float bits are mapped to an order-preserving 32-bit key, four passes of 8-bit digit
histograms narrow down the key of the ``k``-th largest value and how many of its ties to
take, and one compaction pass writes the chosen columns in ascending order. It is exact
(the same set as ``torch.topk`` up to which tied columns are taken: the lowest-indexed),
deterministic (no atomics) and needs no scratch memory, so it captures in a CUDA graph.

:func:`write_selected` turns the picks into indices of the KV pool viewed as
``[slots·Hkv, 1, d]`` (``slot·Hkv + g``), the layout a paged attention kernel reads with page
size 1 and one kv head.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_SIGN: tl.constexpr = tl.constexpr(-2147483648)  # 0x80000000 as int32


@triton.jit
def _ordered_key(x):
    """Float → int32 whose signed order is the float order (−0 folded onto +0)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(x == 0.0, 0, bits)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _topk_kernel(
    scores_ptr, counts_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr,
    L, kmax, num_kv_heads,
    stride_sr, stride_or, stride_rr,
    WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    k = tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)
    if k > 0:
        base = scores_ptr + row.to(tl.int64) * stride_sr
        bins = tl.arange(0, 256)
        # radix select on u = key with the sign bit flipped (unsigned order = float order);
        # arithmetic shifts are fine: digits are masked, prefixes compared shifted alike
        prefix = tl.zeros([], tl.int32)
        remaining = k  # how many of the still-matching elements to take
        for p in tl.static_range(4):
            shift = 24 - 8 * p
            hist = tl.zeros([256], tl.int32)
            for start in range(0, L, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                ok = offs < L
                u = _ordered_key(tl.load(base + offs, mask=ok, other=0.0)) ^ _SIGN
                if p > 0:
                    ok = ok & ((u >> (shift + 8)) == (prefix >> (shift + 8)))
                hist += tl.histogram((u >> shift) & 0xFF, 256, mask=ok)
            # at_least[v] = matching elements with digit ≥ v; the k-th largest has the largest
            # digit v with at_least[v] ≥ remaining
            at_least = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
            digit = tl.max(tl.where(at_least >= remaining, bins, -1), axis=0)
            remaining -= tl.sum(tl.where(bins > digit, hist, 0), axis=0)
            prefix = prefix | (digit << shift)
        threshold = prefix ^ _SIGN  # back to the signed-ordered key
        # keep every key > threshold and the first `remaining` keys == threshold
        if WRITE_INDICES:
            b = row // num_kv_heads
            g = row % num_kv_heads
            pool = tl.load(req_pool_ptr + b).to(tl.int64)
            dst = tl.load(indptr_ptr + row)
        taken_ties = tl.zeros([], tl.int32)
        written = tl.zeros([], tl.int32)
        for start in range(0, L, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            ok = offs < L
            key = _ordered_key(tl.load(base + offs, mask=ok, other=0.0))
            above = ok & (key > threshold)
            tie = ok & (key == threshold)
            tie_rank = taken_ties + tl.cumsum(tie.to(tl.int32), axis=0) - 1
            take = above | (tie & (tie_rank < remaining))
            pos = written + tl.cumsum(take.to(tl.int32), axis=0) - 1
            tl.store(out_idx_ptr + row.to(tl.int64) * stride_or + pos, offs, mask=take)
            if WRITE_INDICES:
                slot = tl.load(req_to_token_ptr + pool * stride_rr + offs, mask=take, other=0)
                tl.store(out_indices_ptr + dst + pos, slot * num_kv_heads + g, mask=take)
            taken_ties += tl.sum(tie.to(tl.int32), axis=0)
            written += tl.sum(take.to(tl.int32), axis=0)


def topk_rows(scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor, block: int = 4096) -> None:
    """Columns of the ``counts[r]`` largest scores of each row ``r < rows`` into ``out_idx[r, :counts[r]]``.

    ``scores`` ``[rows_cap, L]`` float32, ``counts`` ``[rows_cap]`` int32 (clamped to
    ``min(kmax, L)``), ``out_idx`` ``[rows_cap, kmax]`` int32. Ties at the threshold go to the
    lowest columns; ±inf are ordinary values (−0.0 equals +0.0). Order within a row is
    ascending column; entries past ``counts[r]`` are left untouched. No host sync, no allocation.
    """
    _launch_topk(scores, counts, rows, out_idx, None, block)


def select_and_write(
    scores: torch.Tensor, counts: torch.Tensor, indptr: torch.Tensor, req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor, num_kv_heads: int, rows: int, scratch_idx: torch.Tensor,
    out_indices: torch.Tensor, block: int = 4096,
) -> None:
    """:func:`topk_rows` into ``scratch_idx`` fused with :func:`write_selected` into ``out_indices``."""
    _launch_topk(scores, counts, rows, scratch_idx, (indptr, req_to_token, req_pool_indices, num_kv_heads, out_indices), block)


def _launch_topk(
    scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor,
    write: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor] | None, block: int,
) -> None:
    L = scores.shape[1]
    kmax = out_idx.shape[1]
    if rows == 0 or L == 0 or kmax == 0:
        return
    assert scores.dtype == torch.float32 and scores.stride(1) == 1
    assert out_idx.dtype == torch.int32 and out_idx.stride(1) == 1
    assert rows <= scores.shape[0] and rows <= out_idx.shape[0] and rows <= counts.shape[0]
    if write is None:
        indptr, req_to_token, req_pool, kv_heads, out_indices = counts, counts, counts, 1, counts  # unused
        stride_rr = 0
    else:
        indptr, req_to_token, req_pool, kv_heads, out_indices = write
        assert out_indices.dtype == torch.int32 and req_to_token.stride(1) == 1
        stride_rr = req_to_token.stride(0)
    _topk_kernel[(rows,)](
        scores, counts, out_idx,
        indptr, req_to_token, req_pool, out_indices,
        L, kmax, kv_heads,
        scores.stride(0), out_idx.stride(0), stride_rr,
        WRITE_INDICES=write is not None, BLOCK=block,
    )


@triton.jit
def _write_selected_kernel(
    topk_ptr, counts_ptr, indptr_ptr, req_to_token_ptr, req_pool_ptr, out_ptr,
    num_kv_heads, stride_tr, stride_rr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = j < tl.load(counts_ptr + row)
    b = row // num_kv_heads
    g = row % num_kv_heads
    pool = tl.load(req_pool_ptr + b).to(tl.int64)
    tok = tl.load(topk_ptr + row.to(tl.int64) * stride_tr + j, mask=ok, other=0).to(tl.int64)
    slot = tl.load(req_to_token_ptr + pool * stride_rr + tok, mask=ok, other=0)
    dst = tl.load(indptr_ptr + row)
    tl.store(out_ptr + dst + j, slot * num_kv_heads + g, mask=ok)


def write_selected(
    topk_idx: torch.Tensor, counts: torch.Tensor, indptr: torch.Tensor, req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor, num_kv_heads: int, out_indices: torch.Tensor, rows: int, block: int = 256,
) -> None:
    """``out_indices[indptr[r] + j] = req_to_token[req_pool_indices[b], topk_idx[r, j]]·Hkv + g``.

    For rows ``r = b·Hkv + g < rows`` and ``j < counts[r]``. ``topk_idx`` ``[rows_cap, kmax]``
    int32/int64 token positions, ``counts`` ``[rows_cap]`` int32, ``indptr`` ``[rows_cap + 1]``
    int32, ``out_indices`` ``[N]`` int32 (indices into the pool viewed as ``[slots·Hkv, 1, d]``).
    No host synchronisation, no allocation.
    """
    kmax = topk_idx.shape[1]
    if rows == 0 or kmax == 0:
        return
    assert topk_idx.stride(1) == 1 and req_to_token.stride(1) == 1 and out_indices.dtype == torch.int32
    grid = (rows, triton.cdiv(kmax, block))
    _write_selected_kernel[grid](
        topk_idx, counts, indptr, req_to_token, req_pool_indices, out_indices,
        num_kv_heads, topk_idx.stride(0), req_to_token.stride(0),
        BLOCK=block,
    )
