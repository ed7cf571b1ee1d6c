"""Score and top-K of whole rows held on chip: one program per (request, kv head).

The split radix select (:mod:`.score` then :mod:`.select`) writes every score to memory and
reads it back in up to four passes; on the H200 at batch 32 × 32K that is 6.9 ms of a 10 ms
step, bound by each pass's per-element work and loop latency rather than by bytes. Here a
program scores its whole row into registers (:data:`ROW` + :data:`TAIL` columns: 72 registers
a thread at 16 warps), finds the ``k``-th largest key by 32 rounds of compare-and-count (bit by
bit from the top: the largest key ``T`` with at least ``k`` keys ``≥ T``), and writes the picks
in column order with one scan, ties to the lowest columns. The picks are the radix select's,
bit for bit (the same scores, the same order-preserving keys, the same tie rule); nothing goes
through memory but the slots, codes and table entries it reads and the picks it writes. With
:data:`NARROW_ROUNDS` the rounds after the first few count only the keys that can still
decide (a per-row list in memory), a third of a full round's instructions.

Rows longer than :func:`longest_row` are left to the split select, which is given lengths
with the on-chip rows zeroed (:meth:`SparseDecodeBuffers.set_counts`) so it does nothing for them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2ats_sglang.kernels.select import _SIGN, _ordered_key

ROW = 32768  # columns a program holds in its main block (a power of two)
TAIL = 4096  # and in a second block after it: a 32K prompt's decode tokens (a power of two)
WARPS = 16  # warps a program runs: ROW / (32·WARPS) keys a thread for the main block
# rows a batch needs before the on-chip select runs instead of the split one (None: never):
# few rows leave most SMs idle, where splitting each row over many programs is faster
FROM_ROWS: int | None = None
# rounds over the whole row before its candidates (the keys sharing the threshold's top bits so
# far) are copied to a per-row list of CANDIDATES and the remaining rounds count only those
# (0: every round over the whole row); a row with more candidates goes on over the whole row
NARROW_ROUNDS = 0
CANDIDATES = 2048
_INT_MIN: tl.constexpr = tl.constexpr(-2147483648)


def longest_row() -> int:
    """The longest row the on-chip select takes; the split select takes longer ones."""
    return ROW + TAIL


def onchip_runs(rows: int) -> bool:
    """Whether a batch of ``rows`` rows is picked on chip (:data:`FROM_ROWS`)."""
    return FROM_ROWS is not None and rows >= FROM_ROWS


def onchip_scratch_numel(rows_cap: int) -> int:
    """Int32 entries of the candidate lists :data:`NARROW_ROUNDS` needs for ``rows_cap`` rows."""
    return rows_cap * (CANDIDATES + 1)  # a count and the list


def _blocks(L: int) -> tuple[int, int]:
    """Main and tail block sizes for rows of up to ``L`` columns (tail 0: none)."""
    if L <= ROW:
        return max(16, triton.next_power_of_2(L)), 0
    return ROW, min(TAIL, triton.next_power_of_2(L - ROW))


@triton.jit
def _row_keys(lut_head, codes_head, req_row, edges_ptr, start, n, seq_len, num_buckets, sinks, window,
              stride_lk, stride_lc, stride_cs, SIZE: tl.constexpr):
    """Order-preserving keys of columns ``[start, start + SIZE)`` of one row; past ``n``: INT_MIN.
    The scores are :func:`~a2ats_sglang.kernels.score.score_tokens`'s, computed in an order that
    keeps few values a column alive (the bucket, then the slot, the code and the entry, by 32-bit
    offsets from the head's table and codes)."""
    t = start + tl.arange(0, SIZE)
    bucket = tl.zeros_like(t)  # distances below edges[1] (window included) → 0
    for k in range(1, num_buckets):  # distance seq_len − 1 − t ≥ edges[k]
        bucket += (t <= seq_len - 1 - tl.load(edges_ptr + k)).to(tl.int32)
    visible = t < n
    protected = (t < sinks) | (t >= seq_len - window)
    scored = visible & ~protected
    slot = tl.load(req_row + t, mask=scored, other=0)
    code = tl.load(codes_head + slot * stride_cs, mask=scored, other=0).to(tl.int32) & 0xFFFF
    acc = tl.load(lut_head + bucket * stride_lk + code * stride_lc, mask=scored)
    return tl.where(visible, _ordered_key(tl.where(protected, float("inf"), acc)), _INT_MIN)


@triton.jit
def _count_at_least(head, tail, threshold, TAIL: tl.constexpr):
    """Keys ``≥ threshold`` in the main and tail blocks. # scalar"""
    count = tl.sum((head >= threshold).to(tl.int32), axis=0)
    if TAIL > 0:
        count += tl.sum((tail >= threshold).to(tl.int32), axis=0)
    return count


@triton.jit
def _keep_candidates(keys, t, n, prefix, high_bits, scratch_row, CANDIDATES: tl.constexpr):
    """Append the keys of columns ``< n`` whose ``high_bits`` equal ``prefix``'s (signed keys:
    the top bits of ``key ^ SIGN`` are those of ``key`` with the sign bit flipped) to the row's
    list, ``scratch_row[1:]``, as far as its ``CANDIDATES`` go: any order (they are only counted),
    each its place from the count in ``scratch_row[0]`` (an integer atomic)."""
    keep = ((keys & high_bits) == prefix) & (t < n)
    pos = tl.atomic_add(scratch_row + tl.zeros_like(t), 1, mask=keep, sem="relaxed", scope="cta")
    tl.store(scratch_row + 1 + pos, keys, mask=keep & (pos < CANDIDATES))


@triton.jit
def _write_picks(take, t, pos, k, picks_row, req_row, indices_row, num_kv_heads, g, WRITE_INDICES: tl.constexpr):
    """Columns ``t`` where ``take`` at ``pos``; nothing at or past ``k`` (only wrong counts could
    put it there: then the row is wrong, the memory around it intact)."""
    take = take & (pos < k)
    tl.store(picks_row + pos, t, mask=take)
    if WRITE_INDICES:
        slot = tl.load(req_row + t, mask=take, other=0)
        tl.store(indices_row + pos, slot * num_kv_heads + g, mask=take)


@triton.jit
def _onchip_kernel(
    lut_ptr, codes_ptr, req_to_token_ptr, req_pool_ptr, seq_lens_ptr, edges_ptr, counts_ptr, picks_ptr,
    indptr_ptr, indices_ptr, scratch_ptr,
    num_kv_heads, num_buckets, L, kmax, sinks, window,
    stride_lb, stride_lk, stride_lg, stride_lc, stride_cs, stride_ch, stride_rr, stride_pr,
    ROW: tl.constexpr, TAIL: tl.constexpr, WRITE_INDICES: tl.constexpr, NARROW: tl.constexpr,
    CANDIDATES: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // num_kv_heads
    g = row % num_kv_heads
    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    n = tl.minimum(seq_len, L)
    k = tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), n)
    if (k > 0) & (n <= ROW + TAIL):  # longer rows are the split select's
        req_row = req_to_token_ptr + tl.load(req_pool_ptr + b).to(tl.int64) * stride_rr
        lut_head = lut_ptr + b.to(tl.int64) * stride_lb + g.to(tl.int64) * stride_lg
        codes_head = codes_ptr + g.to(tl.int64) * stride_ch
        head = _row_keys(lut_head, codes_head, req_row, edges_ptr, 0, n, seq_len, num_buckets, sinks, window,
                         stride_lk, stride_lc, stride_cs, ROW)
        tail = head  # (unused without a tail)
        if TAIL > 0:
            tail = _row_keys(lut_head, codes_head, req_row, edges_ptr, ROW, n, seq_len, num_buckets, sinks, window,
                             stride_lk, stride_lc, stride_cs, TAIL)
        # the k-th largest key, bit by bit from the top, in the unsigned order (key ^ SIGN)
        u = tl.zeros([], tl.int32)
        for i in range(32 if NARROW == 0 else NARROW):
            candidate = u | (tl.full([], 1, tl.int32) << (31 - i))
            u = tl.where(_count_at_least(head, tail, candidate ^ _SIGN, TAIL) >= k, candidate, u)
        if NARROW > 0:  # the rest of the bits among the keys that share the NARROW found so far
            high_bits = -(tl.full([], 1, tl.int32) << (32 - NARROW))  # the top NARROW bits set
            prefix = u ^ _SIGN
            above = tl.sum(((head & high_bits) > prefix).to(tl.int32), axis=0)
            scratch_row = scratch_ptr + row.to(tl.int64) * (CANDIDATES + 1)
            tl.store(scratch_row, 0)
            tl.debug_barrier()  # the count is 0 before any thread adds to it
            _keep_candidates(head, tl.arange(0, ROW), n, prefix, high_bits, scratch_row, CANDIDATES)
            if TAIL > 0:
                above += tl.sum(((tail & high_bits) > prefix).to(tl.int32), axis=0)
                _keep_candidates(tail, ROW + tl.arange(0, TAIL), n, prefix, high_bits, scratch_row, CANDIDATES)
            tl.debug_barrier()  # every thread's stores before any thread's loads
            kept = tl.atomic_add(scratch_row, 0, sem="relaxed", scope="cta")
            if kept <= CANDIDATES:
                c = tl.arange(0, CANDIDATES)
                few = tl.load(scratch_row + 1 + c, mask=c < kept, other=_INT_MIN)
                for i in range(NARROW, 32):
                    candidate = u | (tl.full([], 1, tl.int32) << (31 - i))
                    at_least = above + tl.sum((few >= (candidate ^ _SIGN)).to(tl.int32), axis=0)
                    u = tl.where(at_least >= k, candidate, u)
            else:
                for i in range(NARROW, 32):
                    candidate = u | (tl.full([], 1, tl.int32) << (31 - i))
                    u = tl.where(_count_at_least(head, tail, candidate ^ _SIGN, TAIL) >= k, candidate, u)
        threshold = u ^ _SIGN
        # the keys above it, then its ties in column order until k (positions < n: never padding)
        t = tl.arange(0, ROW)
        above = head > threshold
        tie = (head == threshold) & (t < n)
        need = k - tl.sum(above.to(tl.int32), axis=0)
        if TAIL > 0:
            t_tail = ROW + tl.arange(0, TAIL)
            above_tail = tail > threshold
            tie_tail = (tail == threshold) & (t_tail < n)
            need -= tl.sum(above_tail.to(tl.int32), axis=0)
        take = above | (tie & (tl.cumsum(tie.to(tl.int32), axis=0) <= need))
        pos = tl.cumsum(take.to(tl.int32), axis=0) - 1
        picks_row = picks_ptr + row.to(tl.int64) * stride_pr
        indices_row = indices_ptr
        if WRITE_INDICES:
            indices_row += tl.load(indptr_ptr + row)
        _write_picks(take, t, pos, k, picks_row, req_row, indices_row, num_kv_heads, g, WRITE_INDICES)
        if TAIL > 0:
            ties_before = tl.sum(tie.to(tl.int32), axis=0)
            take_tail = above_tail | (tie_tail & (ties_before + tl.cumsum(tie_tail.to(tl.int32), axis=0) <= need))
            pos_tail = tl.sum(take.to(tl.int32), axis=0) + tl.cumsum(take_tail.to(tl.int32), axis=0) - 1
            _write_picks(take_tail, t_tail, pos_tail, k, picks_row, req_row, indices_row, num_kv_heads, g, WRITE_INDICES)


def onchip_select(
    lut: torch.Tensor, codes: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor, edges: torch.Tensor, sinks: int, window: int, counts: torch.Tensor, L: int,
    picks: torch.Tensor, write: tuple[torch.Tensor, torch.Tensor] | None = None,
    scratch: torch.Tensor | None = None,
) -> None:
    """Score and pick each row ``r = b·Hkv + g`` of up to :func:`longest_row` columns.

    The scores are :func:`~a2ats_sglang.kernels.score.score_tokens`'s (``lut``, ``codes``,
    ``req_to_token``, ``req_pool_indices``, ``seq_lens``, ``edges``, ``sinks`` and ``window``
    as there; a row holds columns ``< min(seq_lens[b], L)``) and the picks
    :func:`~a2ats_sglang.kernels.select.topk_rows`'s: the columns of the
    ``min(counts[r], kmax, length)`` largest, ascending, ties to the lowest, into ``picks[r]``
    (``[rows_cap, kmax]`` int32); with ``write`` = ``(indptr, indices)`` also their KV-pool
    indices ``slot·Hkv + g`` into ``indices[indptr[r]:]``, as
    :func:`~a2ats_sglang.kernels.select.select_and_write` writes them. Longer rows are left
    untouched. With :data:`NARROW_ROUNDS` the rows' candidates go through ``scratch``
    (:func:`onchip_scratch_numel` entries). No host synchronisation, no allocation.
    """
    kv_heads = codes.shape[1]
    bs, num_buckets, lut_kv_heads, _ = lut.shape
    kmax = picks.shape[1]
    if bs == 0 or L == 0 or kmax == 0:
        return
    assert lut_kv_heads == kv_heads and edges.shape[0] == num_buckets and lut.dtype == torch.float32
    assert req_to_token.stride(1) == 1 and picks.stride(1) == 1 and picks.dtype == torch.int32
    assert picks.shape[0] >= bs * kv_heads and counts.shape[0] >= bs * kv_heads
    indptr, indices = write if write is not None else (counts, counts)  # unused without write
    assert write is None or indices.dtype == torch.int32
    narrow = NARROW_ROUNDS
    assert narrow == 0 or (scratch is not None and scratch.numel() >= onchip_scratch_numel(bs * kv_heads)
                           and scratch.dtype == torch.int32), "narrowing needs onchip_scratch"
    row, tail = _blocks(L)
    _onchip_kernel[(bs * kv_heads,)](
        lut, codes, req_to_token, req_pool_indices, seq_lens, edges, counts, picks, indptr, indices,
        scratch if narrow else counts,
        kv_heads, num_buckets, L, kmax, sinks, window,
        *lut.stride(), codes.stride(0), codes.stride(1), req_to_token.stride(0), picks.stride(0),
        ROW=row, TAIL=tail, WRITE_INDICES=write is not None, NARROW=narrow, CANDIDATES=CANDIDATES,
        num_warps=max(1, min(WARPS, row // 1024)),
    )
