"""Top-K among candidates: the tokens scoring at least a threshold carried from the previous step.

The score kernel, given a threshold ``T`` per (request slot, kv head), appends to each row the
columns whose score is at least ``T`` (:func:`~a2ats_sglang.kernels.score.score_tokens` with
``candidates``). If at least ``k`` are, the ``k``-th largest score is at least ``T`` too, so the
exact top-``k`` (ties toward the lower column, every tie of the ``k``-th included) lies among
the candidates, whatever ``T`` was: a stale or a first step's threshold changes the speed,
never the picks.
:func:`candidate_topk` then selects among at most ``CAP`` candidates in registers (sorted by
column, a radix select over their keys, the compaction in column order), instead of four
passes over the row's scores. Rows with too few candidates, or too many to hold, are flagged
for the split select (:func:`~a2ats_sglang.kernels.select.topk_rows` with ``done``), which
skips the others. Each row also sets its next threshold: the ``margin·k``-th largest of its
candidates (of those it held, if it held too many, so that an overflow narrows the next step),
or −inf if it had too few.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2ats_sglang.kernels.select import _SIGN, _ordered_key, _pick_digit, _row_k, _row_len

MARGIN = 2  # the next threshold keeps about this many times k candidates (at most halfway to CAP)
MAX_CAP = 4096  # candidates a row holds at most: 8,192 spill registers on sm_90 at any warp count
_NO_COLUMN: tl.constexpr = tl.constexpr(2147483647)  # sorts after every column


def candidate_capacity(width: int) -> int:
    """Candidates a row holds: room for :data:`MARGIN` times the widest budget, up to
    :data:`MAX_CAP` (a 128K graph's 4,005-token width leaves little margin: most rows fall back)."""
    return min(MAX_CAP, triton.next_power_of_2(max(MARGIN * width, 16)))


@triton.jit
def _kth_in_tile(u, valid, k, EXACT: tl.constexpr):
    """Radix select in registers: the unsigned key of the ``k``-th largest of ``u[valid]``,
    how many keys equal to it are still to take, and how many there are. Unless ``EXACT``, it
    stops once the chosen bin holds just the keys still to take (as the split select does):
    the prefix is then only that bin's, a bound rather than the key."""
    prefix = tl.zeros([], tl.int32)
    remaining = k
    ties = k
    resolved = tl.zeros([], tl.int32)
    for p in tl.static_range(4):
        if resolved == 0:
            shift: tl.constexpr = 24 - 8 * p
            match = valid
            if p > 0:
                match = valid & ((u >> (shift + 8)) == (prefix >> (shift + 8)))
            digit, above, ties = _pick_digit(tl.histogram((u >> shift) & 0xFF, 256, mask=match), remaining)
            remaining -= above
            prefix = prefix | (digit << shift)
            if not EXACT:
                resolved = (ties == remaining).to(tl.int32)
    return prefix, remaining, ties


@triton.jit
def _candidate_topk_kernel(
    scores_ptr, counts_ptr, lens_ptr, cand_ptr, cand_n_ptr, done_ptr, thresh_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr,
    L, kmax, num_kv_heads, margin,
    stride_sr, stride_cr, stride_or, stride_rr,
    CAP: tl.constexpr, WRITE_INDICES: tl.constexpr, HAS_LENS: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // num_kv_heads
    g = row % num_kv_heads
    n_row = _row_len(lens_ptr, row, num_kv_heads, L, HAS_LENS)
    k = _row_k(counts_ptr, counts_ptr, row, kmax, n_row, False)
    n = tl.load(cand_n_ptr + row)
    held = tl.minimum(n, CAP)
    j = tl.arange(0, CAP)
    valid = j < held
    col = tl.sort(tl.load(cand_ptr + row.to(tl.int64) * stride_cr + j, mask=valid, other=_NO_COLUMN))
    u = _ordered_key(tl.load(scores_ptr + row.to(tl.int64) * stride_sr + col, mask=valid, other=0.0)) ^ _SIGN
    done = (k > 0) & (n >= k) & (n <= CAP)
    pool = tl.load(req_pool_ptr + b).to(tl.int64)
    if done:
        prefix, remaining, ties = _kth_in_tile(u, valid, k, False)
        key, threshold = u ^ _SIGN, prefix ^ _SIGN  # signed order is the scores' order
        if ties == remaining:
            take = valid & (key >= threshold)
        else:
            tie = valid & (key == threshold)
            take = (valid & (key > threshold)) | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= remaining))
        pos = tl.cumsum(take.to(tl.int32), axis=0) - 1
        take = take & (pos < k)
        tl.store(out_idx_ptr + row.to(tl.int64) * stride_or + pos, col, mask=take)
        if WRITE_INDICES:
            slot = tl.load(req_to_token_ptr + pool * stride_rr + col, mask=take, other=0)
            tl.store(out_indices_ptr + tl.load(indptr_ptr + row) + pos, slot * num_kv_heads + g, mask=take)
    # the next step's threshold: the margin·k-th largest held (at most halfway from k to CAP, so
    # that a step whose scores rise a little still fits; ≥ keeps it and its ties), or −inf after too few
    m = tl.minimum(held, tl.maximum(k, tl.minimum(margin * k, (k + CAP) // 2)))
    bits = tl.full([], -8388608, tl.int32)  # −inf's bits
    if (n >= k) & (m > 0):
        prefix_m, _, _ = _kth_in_tile(u, valid, m, True)
        key_m = prefix_m ^ _SIGN
        bits = key_m ^ ((key_m >> 31) & 0x7FFFFFFF)  # the key map is its own inverse
    tl.store(thresh_ptr + pool * num_kv_heads + g, bits.to(tl.float32, bitcast=True))
    tl.store(done_ptr + row, done.to(tl.int32))
    tl.store(cand_n_ptr + row, 0)  # the next layer's score kernel counts afresh


def candidate_topk(
    scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor, candidates: torch.Tensor,
    cand_n: torch.Tensor, done: torch.Tensor, thresh: torch.Tensor, req_pool_indices: torch.Tensor,
    num_kv_heads: int, seq_lens: torch.Tensor | None = None,
    write: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None, margin: int = MARGIN,
) -> None:
    """The top-``counts[r]`` columns of each row ``r < rows`` from its candidates, where they suffice.

    ``candidates`` ``[rows_cap, CAP]`` int32 columns (``cand_n[r]`` appended, the first ``CAP``
    kept) of scores at or above the row's threshold, ``thresh`` ``[R·Hkv]`` float32 by (request slot
    ``req_pool_indices[b]``, kv head). Rows with at least ``counts[r]`` candidates and at most
    ``CAP`` get ``out_idx[r, :counts[r]]`` in ascending order, as
    :func:`~a2ats_sglang.kernels.select.topk_rows` would, and, with ``write = (indptr,
    req_to_token, out_indices)``, their KV-pool indices; ``done[r]`` says which. Sets the next
    thresholds and zeroes ``cand_n``. No host sync, no allocation.
    """
    L, kmax, cap = scores.shape[1], out_idx.shape[1], candidates.shape[1]
    if rows == 0 or L == 0 or kmax == 0:
        return
    assert cap == triton.next_power_of_2(cap) and cap <= MAX_CAP, cap
    assert candidates.stride(1) == 1 and candidates.dtype == torch.int32
    assert scores.dtype == torch.float32 and scores.stride(1) == 1 and thresh.dtype == torch.float32
    assert out_idx.dtype == torch.int32 and out_idx.stride(1) == 1 and cand_n.dtype == done.dtype == torch.int32
    if write is None:
        indptr, req_to_token, out_indices, stride_rr = counts, counts, counts, 0  # unused
    else:
        indptr, req_to_token, out_indices = write
        assert out_indices.dtype == torch.int32 and req_to_token.stride(1) == 1
        stride_rr = req_to_token.stride(0)
    _candidate_topk_kernel[(rows,)](
        scores, counts, seq_lens if seq_lens is not None else counts, candidates, cand_n, done, thresh, out_idx,
        indptr, req_to_token, req_pool_indices, out_indices,
        L, kmax, num_kv_heads, margin,
        scores.stride(0), candidates.stride(0), out_idx.stride(0), stride_rr,
        CAP=cap, WRITE_INDICES=write is not None, HAS_LENS=seq_lens is not None,
        num_warps=8,
    )
