"""Per-row top-K of decode scores in one read: a bin of the row's own score range, then that bin alone.

Rows are (request, kv head) pairs ``r = b·Hkv + g``. Decode scores are
lookup-table entries, so every score of a row lies in ``[lo, hi]``, the range of its table
(:func:`~a2ats_sglang.kernels.lut.folded_lookup_table` writes each program's partial range).
The digit ``d(s) = clamp(⌊(s − lo)·256/(hi − lo)⌋, 0, 255)`` is weakly monotone in ``s``, so with
``D`` the bin of the ``k``-th largest score every token whose digit is above ``D`` is picked,
every one below is not, and only bin ``D`` (a few dozen to a few hundred of a 32K row) needs its
scores compared. The top byte of the float (sign and exponent), the radix select's first digit,
leaves some 8,000 there instead (the radix select main ran before 2026-12-03: four 8-bit
histogram passes over every score and a compaction, five reads where this takes one).

1. The score kernel (:func:`~a2ats_sglang.kernels.score.score_tokens` with ``topk_workspace``)
   counts each split's digits into the row's histograms while it writes the scores.
2. One launch of :func:`select_topk` then reads every split's scores once: the columns above bin
   ``D`` are written as picks, and bin ``D``'s keys and columns are copied to the row's
   candidate list, both in column order at offsets the histograms give (no atomics).
3. The last of a row's split programs to finish (an arrival counter) picks the rest among the
   candidates: a radix select over at most :data:`CANDIDATES` keys in registers, ties to the
   lowest columns. A bin of more candidates is resolved by that program over the whole row
   (exact, and several reads of the row by one program: rare).

The picks are exact (the set of a stable descending sort: ties at the threshold to the lowest
columns) and deterministic: every count is an integer, and the digit is computed by the same
operations on the same values in both kernels (:func:`_digit_params`, :func:`_linear_digit`).
A row's picks are those above bin ``D`` in ascending column order, then bin ``D``'s in
ascending column order. No host synchronisation, no allocation; captures in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2ats_sglang.kernels.lut import MAX_RUNS

_SIGN: tl.constexpr = tl.constexpr(-2147483648)  # 0x80000000 as int32
MAX_SPLITS = 16  # programs a row's columns are split over, at most
MIN_SPLIT_COLUMNS = 2048  # below this a split's fixed costs outweigh what it saves
MAX_PROGRAMS = 1024  # rows × splits: enough to fill an H100 several times over
SPLIT_ALIGN = 512  # the score kernel's block: each of its programs counts into one split
_SPLIT_ALIGN: tl.constexpr = tl.constexpr(SPLIT_ALIGN)


@triton.jit
def _ordered_key(x):
    """Float → int32 whose signed order is the float order (−0 folded onto +0)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(x == 0.0, 0, bits)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _pick_digit(hist, remaining):
    """Digit of the ``remaining``-th largest matching key, how many larger ones precede it, and
    how many share it.

    at_least[v] = matching keys with digit ≥ v; the answer is the largest v with
    at_least[v] ≥ remaining.
    """
    bins = tl.arange(0, 256)
    at_least = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
    digit = tl.max(tl.where(at_least >= remaining, bins, -1), axis=0)
    return digit, tl.sum(tl.where(bins > digit, hist, 0), axis=0), tl.sum(tl.where(bins == digit, hist, 0), axis=0)


@triton.jit
def _row_len(lens_ptr, row, num_kv_heads, L):
    """Columns a row holds: its request's context length (the rest are never read)."""
    return tl.minimum(tl.load(lens_ptr + row // num_kv_heads).to(tl.int32), L)


@triton.jit
def _row_k(counts_ptr, row, kmax, L):
    """Picks of a row: its count, clamped."""
    return tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)


@triton.jit
def _split_bounds(row_len, split, SPLITS: tl.constexpr):
    """Columns ``[lo, hi)`` of split ``split`` of a row of ``row_len`` columns: the row's own
    length is shared out, so a short request in a graph sized for a long context keeps every
    program busy."""
    split_len = tl.cdiv(tl.cdiv(row_len, SPLITS), _SPLIT_ALIGN) * _SPLIT_ALIGN
    lo = split * split_len
    return lo, tl.minimum(lo + split_len, row_len)


def topk_splits(rows: int, L: int) -> int:
    """Programs per row for the split top-K: enough programs to fill the GPU, not too short a split."""
    splits = 1
    while splits < MAX_SPLITS and splits * 2 * MIN_SPLIT_COLUMNS <= L and rows * splits * 2 <= MAX_PROGRAMS:
        splits *= 2
    return splits


CANDIDATES = 1024  # bin D's keys a row holds for the in-register select; more go to the whole-row path
HIST_INTS = MAX_SPLITS * 256  # per row: each split's digit counts (zero between layers)
ROW_INTS = HIST_INTS + 1 + 2 * CANDIDATES  # + the arrival counter, the candidates' keys and columns
_HIST_INTS: tl.constexpr = tl.constexpr(HIST_INTS)
_ROW_INTS: tl.constexpr = tl.constexpr(ROW_INTS)
_CANDIDATES: tl.constexpr = tl.constexpr(CANDIDATES)
SELECT_CONFIG = (4, 2048)  # (num_warps, block) of a split program
RANGE_CHUNK = 128  # partial ranges a program reads at a time


@triton.jit
def _digit_params(range_ptr, row, stride_r, n, CHUNK: tl.constexpr):
    """The row's score range from the table kernel's ``n`` partial (min, max) pairs at
    ``range_ptr + row·stride_r``, as the digit's offset and scale (0 when the range is empty or
    one value: every score then lands in bin 0, which the whole-row path resolves). The min and
    max of the partials do not depend on their order; ``CHUNK`` of them are read at a time."""
    base = range_ptr + row.to(tl.int64) * stride_r
    lo = tl.full([], float("inf"), tl.float32)
    hi = tl.full([], float("-inf"), tl.float32)
    for start in range(0, n, CHUNK):
        i = start + tl.arange(0, CHUNK)
        lo = tl.minimum(lo, tl.min(tl.load(base + 2 * i, mask=i < n, other=float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.load(base + 2 * i + 1, mask=i < n, other=float("-inf")), axis=0))
    width = hi - lo
    ok = (hi > lo) & (width < float("inf"))
    scale = tl.where(ok, 256.0 / tl.where(ok, width, 1.0), 0.0)
    return tl.where(ok, lo, 0.0), scale


@triton.jit
def _linear_digit(s, lo, scale):
    """``clamp(⌊(s − lo)·scale⌋, 0, 255)``: a subtraction and a multiplication (nothing to fuse
    into an FMA), each rounded monotonically, so the digit never decreases with ``s``; ±inf clamp
    to 255 and 0, and with ``scale`` 0 (no range) every score, ±inf included, is in bin 0."""
    x = (s - lo) * scale
    x = tl.where(scale > 0.0, x, 0.0)  # (±inf · 0 is NaN)
    x = tl.minimum(tl.maximum(x, 0.0), 255.0)
    return x.to(tl.int32)


@triton.jit
def _select_in_registers(keys, valid, remaining):
    """The ``remaining``-th largest of ``keys`` where ``valid`` (four 8-bit radix passes over at
    most a block of keys held in registers) and how many of its ties are still to take. # (key, int)"""
    u = keys ^ _SIGN  # unsigned order = float order; arithmetic shifts are fine (digits masked)
    prefix = tl.zeros([], tl.int32)
    for p in tl.static_range(4):
        shift = 24 - 8 * p
        match = valid
        if p > 0:
            match = match & ((u >> (shift + 8)) == (prefix >> (shift + 8)))
        digit, above, _ = _pick_digit(tl.histogram((u >> shift) & 0xFF, 256, mask=match), remaining)
        remaining -= above
        prefix = prefix | (digit << shift)
    return prefix ^ _SIGN, remaining


@triton.jit
def _take_ties(keys, valid, threshold, ties_left, written, taken_ties):
    """Which of ``keys`` are picked given the threshold and the ties still to take, and their
    output positions (column order). # (take, pos, taken, ties seen)"""
    tie = valid & (keys == threshold)
    tie_rank = taken_ties + tl.cumsum(tie.to(tl.int32), axis=0) - 1
    take = (valid & (keys > threshold)) | (tie & (tie_rank < ties_left))
    pos = written + tl.cumsum(take.to(tl.int32), axis=0) - 1
    return take, pos, tl.sum(take.to(tl.int32), axis=0), tl.sum(tie.to(tl.int32), axis=0)


@triton.jit
def _write_picks(out_idx_row, out_indices_row, req_to_token_row, cols, pos, take, num_kv_heads, g,
                 WRITE_INDICES: tl.constexpr):
    tl.store(out_idx_row + pos, cols, mask=take)
    if WRITE_INDICES:
        slot = tl.load(req_to_token_row + cols, mask=take, other=0)
        tl.store(out_indices_row + pos, slot * num_kv_heads + g, mask=take)


@triton.jit
def _resolve_whole_row(base, n, k, digit, lo, scale, remaining, written, out_idx_row, out_indices_row,
                       req_to_token_row, num_kv_heads, g, WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr):
    """Bin ``digit`` held more candidates than the list: one program finds the threshold among the
    bin's scores over the whole row (four radix passes) and writes the bin's picks (one more)."""
    prefix = tl.zeros([], tl.int32)
    for p in tl.static_range(4):
        shift = 24 - 8 * p
        hist = tl.zeros([256], tl.int32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            s = tl.load(base + offs, mask=offs < n, other=0.0)
            u = _ordered_key(s) ^ _SIGN
            match = (offs < n) & (_linear_digit(s, lo, scale) == digit)
            if p > 0:
                match = match & ((u >> (shift + 8)) == (prefix >> (shift + 8)))
            hist += tl.histogram((u >> shift) & 0xFF, 256, mask=match)
        d, above, _ = _pick_digit(hist, remaining)
        remaining -= above
        prefix = prefix | (d << shift)
    threshold = prefix ^ _SIGN
    taken_ties = tl.zeros([], tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        s = tl.load(base + offs, mask=offs < n, other=0.0)
        member = (offs < n) & (_linear_digit(s, lo, scale) == digit)
        take, pos, taken, ties = _take_ties(_ordered_key(s), member, threshold, remaining, written, taken_ties)
        _write_picks(out_idx_row, out_indices_row, req_to_token_row, offs, pos, take & (pos < k), num_kv_heads, g,
                     WRITE_INDICES)
        written += taken
        taken_ties += ties


@triton.jit
def _bin_select_kernel(
    scores_ptr, counts_ptr, ws_ptr, range_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr, lens_ptr,
    L, kmax, num_kv_heads, n_ranges,
    stride_sr, stride_or, stride_rr, stride_range,
    SPLITS: tl.constexpr, WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    n = _row_len(lens_ptr, row, num_kv_heads, L)
    k = _row_k(counts_ptr, row, kmax, n)
    ws_row = ws_ptr + row.to(tl.int64) * _ROW_INTS
    if k > 0:
        s_idx = tl.arange(0, SPLITS)
        bins = tl.arange(0, 256)
        per_split = tl.load(ws_row + s_idx[:, None] * 256 + bins[None, :])  # [SPLITS, 256]
        digit, above, in_bin = _pick_digit(tl.sum(per_split, axis=0), k)
        earlier = s_idx[:, None] < split
        written = tl.sum(tl.sum(tl.where(earlier & (bins[None, :] > digit), per_split, 0), axis=1), axis=0)
        cand = tl.sum(tl.sum(tl.where(earlier & (bins[None, :] == digit), per_split, 0), axis=1), axis=0)
        lo_f, scale = _digit_params(range_ptr, row, stride_range, n_ranges, CHUNK)
        base = scores_ptr + row.to(tl.int64) * stride_sr
        out_idx_row = out_idx_ptr + row.to(tl.int64) * stride_or
        b = row // num_kv_heads
        g = row % num_kv_heads
        req_to_token_row = req_to_token_ptr + (tl.load(req_pool_ptr + b).to(tl.int64) * stride_rr if WRITE_INDICES else 0)
        out_indices_row = out_indices_ptr + (tl.load(indptr_ptr + row) if WRITE_INDICES else 0)
        keys_ptr = ws_row + _HIST_INTS + 1
        cols_ptr = keys_ptr + _CANDIDATES
        lo, hi = _split_bounds(n, split, SPLITS)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            ok = offs < hi
            s = tl.load(base + offs, mask=ok, other=0.0)
            d = _linear_digit(s, lo_f, scale)
            sure = ok & (d > digit)
            pos = written + tl.cumsum(sure.to(tl.int32), axis=0) - 1
            # (only counts that disagree with the scores could reach past k: the row is then
            # wrong, the memory around it intact)
            _write_picks(out_idx_row, out_indices_row, req_to_token_row, offs, pos, sure & (pos < k), num_kv_heads, g,
                         WRITE_INDICES)
            written += tl.sum(sure.to(tl.int32), axis=0)
            inb = ok & (d == digit)
            cpos = cand + tl.cumsum(inb.to(tl.int32), axis=0) - 1
            keep = inb & (cpos < _CANDIDATES)
            tl.store(keys_ptr + cpos, _ordered_key(s), mask=keep)
            tl.store(cols_ptr + cpos, offs, mask=keep)
            cand += tl.sum(inb.to(tl.int32), axis=0)
        # the last split of the row to get here sees every other's picks and candidates
        tl.debug_barrier()
        if tl.atomic_add(ws_row + _HIST_INTS, 1, sem="acq_rel", scope="gpu") == SPLITS - 1:
            tl.store(ws_row + _HIST_INTS, 0)  # no one else touches the counter this launch
            remaining = k - above
            if in_bin <= _CANDIDATES:
                i = tl.arange(0, _CANDIDATES)
                valid = i < in_bin
                keys = tl.load(keys_ptr + i, mask=valid, other=0, cache_modifier=".cg")  # (written by other SMs)
                cols = tl.load(cols_ptr + i, mask=valid, other=0, cache_modifier=".cg")
                threshold, ties_left = _select_in_registers(keys, valid, remaining)
                take, pos, _, _ = _take_ties(keys, valid, threshold, ties_left, above, tl.zeros([], tl.int32))
                _write_picks(out_idx_row, out_indices_row, req_to_token_row, cols, pos, take & (pos < k), num_kv_heads,
                             g, WRITE_INDICES)
            else:
                _resolve_whole_row(base, n, k, digit, lo_f, scale, remaining, above, out_idx_row, out_indices_row,
                                   req_to_token_row, num_kv_heads, g, WRITE_INDICES, BLOCK)
            # every split's counts are read: zero for the next layer's score kernel
            tl.store(ws_row + s_idx[:, None] * 256 + bins[None, :], tl.zeros([SPLITS, 256], tl.int32))
    else:  # (a row with nothing to pick: its splits clear their own counts)
        tl.store(ws_row + split * 256 + tl.arange(0, 256), tl.zeros([256], tl.int32))


def topk_workspace(rows_cap: int, device: torch.device | str) -> torch.Tensor:
    """Scratch for :func:`select_topk` on up to ``rows_cap`` rows (allocate once; zeroed, as the
    digit counts and arrival counters must be between layers). # int32"""
    return torch.zeros(ROW_INTS * rows_cap, dtype=torch.int32, device=device)


def topk_workspace_numel(rows_cap: int) -> int:
    return ROW_INTS * rows_cap


def range_buffer(rows_cap: int, buckets: int, device: torch.device | str) -> torch.Tensor:
    """Each row's partial score ranges, ``[rows_cap, buckets, MAX_RUNS, 2]`` float32 (min, max),
    rewritten whole by every table launch. Empty (+inf, −inf) until then. # float32"""
    out = torch.empty(rows_cap, buckets, MAX_RUNS, 2, dtype=torch.float32, device=device)
    out[..., 0], out[..., 1] = float("inf"), float("-inf")
    return out


def select_topk(
    scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor, workspace: torch.Tensor,
    ranges: torch.Tensor, seq_lens: torch.Tensor, num_kv_heads: int,
    write: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None, block: int | None = None,
) -> None:
    """The ``counts[r]`` largest of ``scores[r, :seq_lens[r // num_kv_heads]]`` into ``out_idx[r, :counts[r]]``.

    ``scores`` ``[rows_cap, L]`` float32 from :func:`~a2ats_sglang.kernels.score.score_tokens`
    run with ``topk_workspace=workspace`` and the same ``ranges`` (:func:`range_buffer`, as
    :func:`~a2ats_sglang.kernels.lut.folded_lookup_table` left it): its digit counts are this
    select's first pass. ``counts`` ``[rows_cap]`` int32 (clamped to ``min(kmax, len)``),
    ``out_idx`` ``[rows_cap, kmax]`` int32. With ``write = (indptr, req_to_token,
    req_pool_indices, out_indices)`` the picks' KV-pool rows (``slot·Hkv + g``) also go to
    ``out_indices[indptr[r] + j]``, the layout a paged attention kernel reads with page size 1 and
    one kv head.
    """
    L = scores.shape[1]
    kmax = out_idx.shape[1]
    if rows == 0 or L == 0 or kmax == 0:
        return
    assert scores.dtype == torch.float32 and scores.stride(1) == 1
    assert out_idx.dtype == torch.int32 and out_idx.stride(1) == 1
    assert rows <= min(scores.shape[0], out_idx.shape[0], counts.shape[0], ranges.shape[0])
    assert workspace.dtype == torch.int32 and workspace.numel() >= ROW_INTS * rows
    assert ranges.dtype == torch.float32 and ranges.is_contiguous() and ranges.shape[2:] == (MAX_RUNS, 2)
    if write is None:
        indptr, req_to_token, req_pool, out_indices, stride_rr = counts, counts, counts, counts, 0  # unused
    else:
        indptr, req_to_token, req_pool, out_indices = write
        assert out_indices.dtype == torch.int32 and req_to_token.stride(1) == 1
        stride_rr = req_to_token.stride(0)
    splits = topk_splits(rows, L)
    num_warps, default_block = SELECT_CONFIG
    block = min(block or default_block, triton.next_power_of_2(triton.cdiv(L, splits)))
    n_ranges = ranges.shape[1] * MAX_RUNS
    _bin_select_kernel[(rows, splits)](
        scores, counts, workspace, ranges, out_idx,
        indptr, req_to_token, req_pool, out_indices, seq_lens,
        L, kmax, num_kv_heads, n_ranges,
        scores.stride(0), out_idx.stride(0), stride_rr, ranges.stride(0),
        SPLITS=splits, WRITE_INDICES=write is not None, BLOCK=block, CHUNK=RANGE_CHUNK,
        num_warps=num_warps,
    )
