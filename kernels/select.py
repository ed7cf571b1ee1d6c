"""Per-row top-K of token scores, and the KV-pool indices of the picked tokens.

Rows are (request, kv head) pairs ``r = b·Hkv + g``. :func:`topk_rows` is a radix select: the
scores' float bits are mapped to an order-preserving 32-bit key, four passes of 8-bit digit
histograms narrow down the key of the ``k``-th largest value and how many of its ties to
take, and one compaction pass writes the chosen columns in ascending order. It is exact
(the same set as ``torch.topk`` up to which tied columns are taken: the lowest-indexed),
deterministic (its only atomics add integers, whose sums do not depend on their order) and
captures in a CUDA graph.

:func:`write_selected` turns the picks into indices of the KV pool viewed as
``[slots·Hkv, 1, d]`` (``slot·Hkv + g``), the layout a paged attention kernel reads with page
size 1 and one kv head.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from a2ats_sglang.kernels.grid import sm_count

_SIGN: tl.constexpr = tl.constexpr(-2147483648)  # 0x80000000 as int32


@triton.jit
def _ordered_key(x):
    """Float → int32 whose signed order is the float order (−0 folded onto +0)."""
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(x == 0.0, 0, bits)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _digit_histogram(base, lo, hi, prefix, P: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """Histogram of digit ``P`` (8 bits, most significant first) of the keys in ``[lo, hi)``
    whose higher digits equal ``prefix``'s. Works on u = key with the sign bit flipped
    (unsigned order = float order); arithmetic shifts are fine: digits are masked and
    prefixes compared shifted alike. # [256] int32"""
    shift: tl.constexpr = 24 - 8 * P
    hist = tl.zeros([256], tl.int32)
    for start in tl.range(lo, hi, BLOCK, num_stages=STAGES):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < hi
        u = _ordered_key(tl.load(base + offs, mask=ok, other=0.0)) ^ _SIGN
        if P > 0:
            ok = ok & ((u >> (shift + 8)) == (prefix >> (shift + 8)))
        hist += tl.histogram((u >> shift) & 0xFF, 256, mask=ok)
    return hist


@triton.jit
def _count_digits(base, lo, hi, prefix, hist_ptr, range_ptr, P: tl.constexpr, BLOCK: tl.constexpr,
                  RANGES: tl.constexpr, STAGES: tl.constexpr):
    """:func:`_digit_histogram` for the late passes, where few keys still match the prefix:
    each match adds one to its bin of ``hist_ptr`` (zeroed beforehand) with an integer atomic
    (order-free, so deterministic), and the others cost only their load and compare, not the
    histogram's per-element ballots over all 256 bins. With ``RANGES`` each bin's smallest and
    largest key go to ``range_ptr[bin]`` and ``range_ptr[256 + bin]`` (atomic min and max: as
    order-free), which tell whether the chosen bin holds one value only."""
    shift: tl.constexpr = 24 - 8 * P
    for start in tl.range(lo, hi, BLOCK, num_stages=STAGES):
        offs = start + tl.arange(0, BLOCK)
        key = _ordered_key(tl.load(base + offs, mask=offs < hi, other=0.0))
        ok = (offs < hi) & (((key ^ _SIGN) >> (shift + 8)) == (prefix >> (shift + 8)))
        digit = ((key ^ _SIGN) >> shift) & 0xFF
        tl.atomic_add(hist_ptr + digit, 1, mask=ok, sem="relaxed")
        if RANGES:
            tl.atomic_min(range_ptr + digit, key, mask=ok, sem="relaxed")
            tl.atomic_max(range_ptr + 256 + digit, key, mask=ok, sem="relaxed")


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
def _compact(
    base, lo, hi, threshold, remaining, all_ties, taken_ties, written, k,
    out_idx_row, req_to_token_row, out_indices_row, num_kv_heads, g,
    WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
):
    """Write the columns in ``[lo, hi)`` with key > threshold, and those == threshold while
    fewer than ``remaining`` ties are taken overall, in ascending order from ``written``.
    ``all_ties``: the row's ties at the threshold are exactly ``remaining`` (the usual case), so
    every tie is taken and the tie ranks need no scan. Nothing lands at or past the row's ``k``
    (only wrong counts could put it there: then the row is wrong, the memory around it intact)."""
    for start in tl.range(lo, hi, BLOCK, num_stages=STAGES):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < hi
        key = _ordered_key(tl.load(base + offs, mask=ok, other=0.0))
        if all_ties:
            take = ok & (key >= threshold)
        else:
            tie = ok & (key == threshold)
            tie_rank = taken_ties + tl.cumsum(tie.to(tl.int32), axis=0) - 1
            take = (ok & (key > threshold)) | (tie & (tie_rank < remaining))
            taken_ties += tl.sum(tie.to(tl.int32), axis=0)
        pos = written + tl.cumsum(take.to(tl.int32), axis=0) - 1
        inside = take & (pos >= 0) & (pos < k)
        tl.store(out_idx_row + pos, offs, mask=inside)
        if WRITE_INDICES:
            slot = tl.load(req_to_token_row + offs, mask=inside, other=0)
            tl.store(out_indices_row + pos, slot * num_kv_heads + g, mask=inside)
        written += tl.sum(take.to(tl.int32), axis=0)


@triton.jit
def _row_len(lens_ptr, row, num_kv_heads, L, HAS_LENS: tl.constexpr):
    """Columns a row holds: its request's context length when given (the rest are −inf padding
    no pick can reach, so the passes skip them), else all ``L``."""
    if HAS_LENS:
        n = tl.minimum(tl.load(lens_ptr + row // num_kv_heads).to(tl.int32), L)
    else:
        n = L
    return n


@triton.jit
def _row_k(counts_ptr, row, kmax, L):
    """Picks of a row: its count, clamped."""
    return tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)


@triton.jit
def _topk_kernel(
    scores_ptr, counts_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr, lens_ptr,
    L, kmax, num_kv_heads,
    stride_sr, stride_or, stride_rr,
    WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr, HAS_LENS: tl.constexpr, STAGES: tl.constexpr,
):
    """One program per row: four histogram passes, then the compaction."""
    row = tl.program_id(0)
    L = _row_len(lens_ptr, row, num_kv_heads, L, HAS_LENS)
    k = _row_k(counts_ptr, row, kmax, L)
    if k > 0:
        base = scores_ptr + row.to(tl.int64) * stride_sr
        prefix = tl.zeros([], tl.int32)
        remaining = k  # how many of the keys matching the prefix to take
        ties = k
        resolved = tl.zeros([], tl.int32)  # the chosen bin holds exactly the keys still to take
        for p in tl.static_range(4):
            if resolved == 0:  # else every key at or above the prefix is picked: no more passes
                digit, above, ties = _pick_digit(_digit_histogram(base, 0, L, prefix, p, BLOCK, STAGES), remaining)
                remaining -= above
                prefix = prefix | (digit << (24 - 8 * p))
                resolved = (ties == remaining).to(tl.int32)
        b = row // num_kv_heads
        g = row % num_kv_heads
        pool = tl.load(req_pool_ptr + b).to(tl.int64) if WRITE_INDICES else 0
        dst = tl.load(indptr_ptr + row) if WRITE_INDICES else 0
        _compact(
            base, 0, L, prefix ^ _SIGN, remaining, ties == remaining, tl.zeros([], tl.int32), tl.zeros([], tl.int32), k,
            out_idx_ptr + row.to(tl.int64) * stride_or, req_to_token_ptr + pool * stride_rr,
            out_indices_ptr + dst, num_kv_heads, g, WRITE_INDICES, BLOCK, STAGES,
        )


HIST_INTS = 4 * 256  # per split: one 256-bin histogram per radix pass
# per split: the choices so far (prefix, still to take, above in earlier splits, resolved, and a
# resolved row's ties at the threshold in the row and in the splits before)
STATE_INTS = 6
MAX_SPLITS = 16  # each pass re-reads every split's histogram of the passes before it
RANGE_INTS = 2 * 256  # per row: the smallest and the largest key of each bin of pass ATOMIC_FROM_PASS
BARRIER_INTS = 1  # per row: the fused top-K's arrival counter (zero between launches)
ROW_INTS = MAX_SPLITS * (HIST_INTS + STATE_INTS) + RANGE_INTS + BARRIER_INTS
ATOMIC_FROM_PASS: tl.constexpr = tl.constexpr(2)  # passes ≥ this count their (few) matching keys by atomics
_STATE_INTS: tl.constexpr = tl.constexpr(STATE_INTS)
_MAX_SPLITS: tl.constexpr = tl.constexpr(MAX_SPLITS)
_ROW_INTS: tl.constexpr = tl.constexpr(ROW_INTS)
_RANGES_AT: tl.constexpr = tl.constexpr(MAX_SPLITS * (HIST_INTS + STATE_INTS))  # a row's bin ranges
_BARRIER_AT: tl.constexpr = tl.constexpr(MAX_SPLITS * (HIST_INTS + STATE_INTS) + RANGE_INTS)
_INT_MAX: tl.constexpr = tl.constexpr(2147483647)


@triton.jit
def _workspace_row(ws_ptr, row):
    """A row's workspace, laid out for :data:`MAX_SPLITS` whatever a launch's split count:
    ``[4 passes][MAX_SPLITS][256]`` histograms, ``[MAX_SPLITS][STATE_INTS]``, then pass 2's
    ``[2][256]`` bin ranges (smallest, largest key), then the fused top-K's barrier counter. Pass 0's
    histograms are zero between steps (the compaction clears them), so the score kernel can
    count into them, and graphs of different batch sizes sharing the workspace agree on where
    they are."""
    return ws_ptr + row.to(tl.int64) * _ROW_INTS


@triton.jit
def _decide(ws_row, P: tl.constexpr, SPLITS: tl.constexpr, split, prefix, remaining, above_before):
    """Pass ``P``'s digit from every split's histogram, given the choices of the passes before.

    Returns the key prefix, how many keys equal to it are still to take, how many keys above
    the threshold lie in splits before ``split`` (through pass ``P``), how many keys equal the
    prefix in the whole row and in the splits before.
    """
    s_idx = tl.arange(0, SPLITS)
    bins = tl.arange(0, 256)
    per_split = tl.load(ws_row + P * _MAX_SPLITS * 256 + s_idx[:, None] * 256 + bins[None, :])  # [SPLITS, 256]
    digit, above, ties = _pick_digit(tl.sum(per_split, axis=0), remaining)
    # a key is above the threshold iff at its first differing digit it is larger
    earlier = s_idx[:, None] < split
    above_before += tl.sum(tl.sum(tl.where(earlier & (bins[None, :] > digit), per_split, 0), axis=1), axis=0)
    ties_before = tl.sum(tl.sum(tl.where(earlier & (bins[None, :] == digit), per_split, 0), axis=1), axis=0)
    return prefix | (digit << (24 - 8 * P)), remaining - above, above_before, ties, ties_before


@triton.jit
def _state_after(ws_row, k, P: tl.constexpr, SPLITS: tl.constexpr, split):
    """The choices of passes ``≤ P``: the previous launch left those of passes ``< P`` in this
    split's state slot (each pass reads one pass of histograms, not all before it).

    A row is resolved once its chosen bin needs no more digits, and the later passes read
    nothing. Either the bin holds exactly the keys still to take: every key at or above the
    prefix is picked, whatever its lower digits, so the compaction takes ``key ≥ prefix`` (ties
    all taken, ``above_before`` counting every key picked in the splits before and
    ``ties_before`` 0). Or, at pass :data:`ATOMIC_FROM_PASS`, the bin's smallest and largest
    keys are equal: the bin is one value, which is then the threshold exactly, and the
    compaction takes the keys above it and the first ties, as after the last pass. Scores are
    lookup-table entries, so tokens with one code in one bucket tie exactly and the first case
    alone rarely happens before the last pass; the second takes most rows at pass 2.

    Returns prefix, still to take, picked before this split (above the threshold), ties at the
    threshold in the row and in the splits before, and whether the row is resolved."""
    slot = ws_row + 4 * _MAX_SPLITS * 256 + split * _STATE_INTS
    if P == 0:
        prefix = tl.zeros([], tl.int32)
        remaining = k
        above_before = tl.zeros([], tl.int32)
        resolved = tl.zeros([], tl.int32)
        kept_ties = tl.zeros([], tl.int32)
        kept_ties_before = tl.zeros([], tl.int32)
    else:
        prefix = tl.load(slot)
        remaining = tl.load(slot + 1)
        above_before = tl.load(slot + 2)
        resolved = tl.load(slot + 3)
        kept_ties = tl.load(slot + 4)
        kept_ties_before = tl.load(slot + 5)
    # (a resolved row's skipped passes left their bins empty or stale: the decision is dropped)
    new_prefix, new_remaining, new_above, ties, ties_before = _decide(ws_row, P, SPLITS, split, prefix, remaining, above_before)
    keep = resolved != 0
    now = ~keep & (ties == new_remaining)
    if P == ATOMIC_FROM_PASS:  # the chosen bin's range: one value is the exact threshold
        digit = (new_prefix >> (24 - 8 * P)) & 0xFF
        low = tl.load(ws_row + _RANGES_AT + digit)
        high = tl.load(ws_row + _RANGES_AT + 256 + digit)
        single = ~keep & ~now & (ties > 0) & (low == high)
        new_prefix = tl.where(single, high ^ _SIGN, new_prefix)
    else:
        single = tl.zeros([], tl.int1)
    return (tl.where(keep, prefix, new_prefix), tl.where(keep, remaining, new_remaining),
            tl.where(keep, above_before, tl.where(now, new_above + ties_before, new_above)),
            tl.where(keep, kept_ties, tl.where(now, new_remaining, ties)),
            tl.where(keep, kept_ties_before, tl.where(now, 0, ties_before)), (keep | now | single).to(tl.int32))


SPLIT_ALIGN = 512  # the score kernel's block: each of its programs counts into one split
_SPLIT_ALIGN: tl.constexpr = tl.constexpr(SPLIT_ALIGN)


@triton.jit
def _split_bounds(row_len, split, SPLITS: tl.constexpr):
    """Columns ``[lo, hi)`` of split ``split`` of a row of ``row_len`` columns: the row's own
    length is shared out, so a short request in a graph sized for a long context keeps every
    program busy."""
    split_len = tl.cdiv(tl.cdiv(row_len, SPLITS), _SPLIT_ALIGN) * _SPLIT_ALIGN
    lo = split * split_len
    return lo, tl.minimum(lo + split_len, row_len)


@triton.jit
def _split_row(counts_ptr, ws_ptr, lens_ptr, row, split, L, kmax, num_kv_heads, SPLITS: tl.constexpr, HAS_LENS: tl.constexpr):
    """A split program's row: its columns, how many to pick, and its workspace."""
    L = _row_len(lens_ptr, row, num_kv_heads, L, HAS_LENS)
    k = _row_k(counts_ptr, row, kmax, L)
    lo, hi = _split_bounds(L, split, SPLITS)
    return lo, hi, k, _workspace_row(ws_ptr, row)


@triton.jit
def _hist_pass(scores_ptr, ws_row, row, split, lo, hi, k, stride_sr,
               P: tl.constexpr, SPLITS: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr):
    """Pass ``P`` for one split of a row (``k > 0``): the choices of the passes before into the
    split's state slot, then its digit histogram into the workspace (empty for a split wholly
    past the row's length)."""
    prefix = tl.zeros([], tl.int32)
    resolved = tl.zeros([], tl.int32)
    if P > 0:
        prefix, remaining, above_before, ties, ties_before, resolved = _state_after(ws_row, k, P - 1, SPLITS, split)
        slot = ws_row + 4 * _MAX_SPLITS * 256 + split * _STATE_INTS
        tl.store(slot, prefix)
        tl.store(slot + 1, remaining)
        tl.store(slot + 2, above_before)
        tl.store(slot + 3, resolved)
        tl.store(slot + 4, ties)
        tl.store(slot + 5, ties_before)
    base = scores_ptr + row.to(tl.int64) * stride_sr
    hist_ptr = ws_row + P * _MAX_SPLITS * 256 + split * 256
    if resolved == 0:  # a resolved row's keys are not read again before the compaction
        if P >= ATOMIC_FROM_PASS:
            _count_digits(base, lo, hi, prefix, hist_ptr, ws_row + _RANGES_AT, P, BLOCK, P == ATOMIC_FROM_PASS, STAGES)
        else:
            tl.store(hist_ptr + tl.arange(0, 256), _digit_histogram(base, lo, hi, prefix, P, BLOCK, STAGES))
    if P == 1:  # nothing reads the counted passes' bins now: reset them for this step's atomics
        for q in tl.static_range(ATOMIC_FROM_PASS, 4):
            tl.store(ws_row + q * _MAX_SPLITS * 256 + split * 256 + tl.arange(0, 256), tl.zeros([256], tl.int32))
        if split == 0:  # the row's bin ranges: empty
            tl.store(ws_row + _RANGES_AT + tl.arange(0, 256), tl.full([256], _INT_MAX, tl.int32))
            tl.store(ws_row + _RANGES_AT + 256 + tl.arange(0, 256), tl.full([256], -_INT_MAX - 1, tl.int32))


@triton.jit
def _compact_pass(
    scores_ptr, ws_row, out_idx_ptr, indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr,
    row, split, lo, hi, k, num_kv_heads, stride_sr, stride_or, stride_rr,
    SPLITS: tl.constexpr, WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr, STAGES: tl.constexpr,
):
    """The compaction for one split of a row (``k > 0``), from the choices of all four passes."""
    prefix, remaining, above_before, ties, ties_before, _ = _state_after(ws_row, k, 3, SPLITS, split)
    b = row // num_kv_heads
    g = row % num_kv_heads
    pool = tl.load(req_pool_ptr + b).to(tl.int64) if WRITE_INDICES else 0
    dst = tl.load(indptr_ptr + row) if WRITE_INDICES else 0
    _compact(
        scores_ptr + row.to(tl.int64) * stride_sr, lo, hi, prefix ^ _SIGN, remaining,
        ties == remaining, ties_before, above_before + tl.minimum(ties_before, remaining), k,
        out_idx_ptr + row.to(tl.int64) * stride_or, req_to_token_ptr + pool * stride_rr,
        out_indices_ptr + dst, num_kv_heads, g, WRITE_INDICES, BLOCK, STAGES,
    )


@triton.jit
def _clear_first_pass(ws_row, split):
    """Pass 0's counts are read: clear them for the next layer's (which may come from the score kernel)."""
    tl.store(ws_row + split * 256 + tl.arange(0, 256), tl.zeros([256], tl.int32))


@triton.jit
def _split_hist_kernel(
    scores_ptr, counts_ptr, ws_ptr, lens_ptr, L, kmax, num_kv_heads, stride_sr,
    P: tl.constexpr, SPLITS: tl.constexpr, BLOCK: tl.constexpr, HAS_LENS: tl.constexpr, STAGES: tl.constexpr,
):
    """Pass ``P`` for one split of a row."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    lo, hi, k, ws_row = _split_row(counts_ptr, ws_ptr, lens_ptr, row, split, L, kmax, num_kv_heads, SPLITS, HAS_LENS)
    if k > 0:
        _hist_pass(scores_ptr, ws_row, row, split, lo, hi, k, stride_sr, P, SPLITS, BLOCK, STAGES)


@triton.jit
def _split_compact_kernel(
    scores_ptr, counts_ptr, ws_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr, lens_ptr,
    L, kmax, num_kv_heads,
    stride_sr, stride_or, stride_rr,
    SPLITS: tl.constexpr, WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr, HAS_LENS: tl.constexpr,
    STAGES: tl.constexpr,
):
    row = tl.program_id(0)
    split = tl.program_id(1)
    lo, hi, k, ws_row = _split_row(counts_ptr, ws_ptr, lens_ptr, row, split, L, kmax, num_kv_heads, SPLITS, HAS_LENS)
    if k > 0:
        _compact_pass(scores_ptr, ws_row, out_idx_ptr, indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr,
                      row, split, lo, hi, k, num_kv_heads, stride_sr, stride_or, stride_rr, SPLITS, WRITE_INDICES, BLOCK,
                      STAGES)
    _clear_first_pass(ws_row, split)


@triton.jit
def _row_barrier(counter_ptr, arrivals):
    """Wait until ``arrivals`` programs of this row have arrived, this one included.

    The CTA barrier orders every thread's workspace writes before the arrival, the release
    atomic publishes them at GPU scope and the acquire polls make the other splits' writes
    visible here; it only terminates when every program of the row is resident at once
    (:func:`fused_topk_fits`)."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    while tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu") < arrivals:
        pass
    tl.debug_barrier()


@triton.jit
def _split_fused_kernel(
    scores_ptr, counts_ptr, ws_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr, lens_ptr,
    L, kmax, num_kv_heads,
    stride_sr, stride_or, stride_rr,
    FIRST: tl.constexpr, SPLITS: tl.constexpr, WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr,
    RANGES_BLOCK: tl.constexpr, HAS_LENS: tl.constexpr, STAGES: tl.constexpr,
):
    """Passes ``FIRST``..3 and the compaction in one launch: what :func:`_split_hist_kernel`
    and :func:`_split_compact_kernel` do in four or five, the splits of a row meeting at a
    barrier after each pass (a counter in the row's workspace). The last program to leave
    resets the counter, so the next layer's launch, or the next graph replay, starts at 0."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    lo, hi, k, ws_row = _split_row(counts_ptr, ws_ptr, lens_ptr, row, split, L, kmax, num_kv_heads, SPLITS, HAS_LENS)
    if k > 0:  # (k is the row's: all its splits take this branch or none)
        counter = ws_row + _BARRIER_AT
        for p in tl.static_range(FIRST, 4):
            _hist_pass(scores_ptr, ws_row, row, split, lo, hi, k, stride_sr, p, SPLITS,
                       RANGES_BLOCK if p == ATOMIC_FROM_PASS else BLOCK, STAGES)
            _row_barrier(counter, (p - FIRST + 1) * SPLITS)
        _compact_pass(scores_ptr, ws_row, out_idx_ptr, indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr,
                      row, split, lo, hi, k, num_kv_heads, stride_sr, stride_or, stride_rr, SPLITS, WRITE_INDICES, BLOCK,
                      STAGES)
        # every split is past its last wait once it arrives here: the last one resets the counter
        if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == (4 - FIRST + 1) * SPLITS - 1:
            tl.atomic_xchg(counter, 0, sem="relaxed", scope="gpu")
    _clear_first_pass(ws_row, split)


# (num_warps, block): one program per row, and one per split
SINGLE_CONFIG = (8, 4096)
SPLIT_CONFIG = (4, 2048)
RANGES_BLOCK = 1024  # pass 2's block: its bin ranges' atomics take 80 registers a thread at 2,048, 40 at 1,024
MIN_SPLIT_COLUMNS = 2048  # below this a split's histogram passes cost more than they save
MAX_PROGRAMS = 1024  # rows × splits: enough to fill an H100 several times over
# the fused top-K (one launch a layer) while rows × splits ≤ this × SMs: its barriers need every
# program of a row resident at once, which one program an SM guarantees; 0 turns it off
FUSED_PROGRAMS_PER_SM = 1
# software-pipelining depth of the top-K's loops over a split (tl.range num_stages: the next
# blocks' scores in flight while this one is counted or compacted; 1 is Triton's plain loop)
# H200, 32K (kernel-tuning-h200-9c6c192.json): two stages took batch 32 (256 rows) from 7.22 to
# 6.88 ms a step and batch 8 (64 rows) from 2.54 to 2.84, so (below STAGED_ROWS, from it)
SELECT_STAGES = (1, 2)
STAGED_ROWS = 256
# at batch 8, 4 splits a row (MAX_PROGRAMS 512) took 2.29 ms against 8 splits' 2.54; batch 32
# runs 4 at the default and was slower at 2 (7.55 against 7.22): from MANY_ROWS rows, at most 4
MANY_ROWS = 64
MANY_ROWS_SPLITS = 4


def topk_splits(rows: int, L: int) -> int:
    """Programs per row for the split top-K: enough programs to fill the GPU, not too short a
    split, and at most :data:`MANY_ROWS_SPLITS` once the rows alone are :data:`MANY_ROWS`."""
    cap = MANY_ROWS_SPLITS if rows >= MANY_ROWS else MAX_SPLITS
    splits = 1
    while splits < cap and splits * 2 * MIN_SPLIT_COLUMNS <= L and rows * splits * 2 <= MAX_PROGRAMS:
        splits *= 2
    return splits


def select_stages(rows: int) -> int:
    """Pipelining depth of the top-K's loops for ``rows`` rows (:data:`SELECT_STAGES`)."""
    few, many = SELECT_STAGES
    return many if rows >= STAGED_ROWS else few


def fused_topk_fits(rows: int, splits: int, t: torch.Tensor) -> bool:
    """Whether the fused top-K may run: on a GPU (the interpreter runs programs one after another,
    so a split would wait for the next forever) with every program resident at once."""
    if not t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return rows * splits <= FUSED_PROGRAMS_PER_SM * sm_count(t)


def topk_workspace(rows_cap: int, device: torch.device | str) -> torch.Tensor:
    """Scratch for :func:`topk_rows` on up to ``rows_cap`` rows (allocate once; zeroed, as pass
    0's histograms must be between steps). # int32"""
    return torch.zeros(topk_workspace_numel(rows_cap), dtype=torch.int32, device=device)


def topk_workspace_numel(rows_cap: int) -> int:
    return ROW_INTS * rows_cap


def topk_rows(
    scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor,
    workspace: torch.Tensor | None = None, block: int | None = None,
    seq_lens: torch.Tensor | None = None, num_kv_heads: int = 1, first_pass_done: bool = False,
    fused: bool | None = None,
) -> None:
    """Columns of the ``counts[r]`` largest scores of each row ``r < rows`` into ``out_idx[r, :counts[r]]``.

    ``scores`` ``[rows_cap, L]`` float32, ``counts`` ``[rows_cap]`` int32 (clamped to
    ``min(kmax, L)``), ``out_idx`` ``[rows_cap, kmax]`` int32. With ``seq_lens`` ``[bs]``, row
    ``r`` holds only columns ``< seq_lens[r // num_kv_heads]``: the rest is never read, so a
    server whose graphs are sized for a long context does not pay for it on short requests.
    Ties at the threshold go to the lowest columns; ±inf are ordinary values (−0.0 equals
    +0.0). Order within a row is ascending column; entries past ``counts[r]`` are left
    untouched. No host sync, no allocation.

    Without ``workspace`` one program handles a whole row (one launch; fine for many rows).
    With a :func:`topk_workspace` buffer each row's own length is split over up to :data:`MAX_SPLITS` programs
    (up to :data:`MAX_PROGRAMS` in all; four histogram launches and a compaction, each reading
    the histograms of one pass and the choices so far), which is what few long rows need.
    ``first_pass_done``: :func:`~a2ats_sglang.kernels.score.score_tokens` counted pass 0 into
    ``workspace`` while writing the scores, so that pass is skipped (needs ``seq_lens``).
    ``fused``: the passes and the compaction in one launch, a row's splits meeting at barriers
    in the workspace; by default (``None``) where :func:`fused_topk_fits`, the small grids whose
    cost is their launches. The picks are the same bits either way.
    H100, CUDA graph, 32 layers, k = 1056 of 32768: 8 rows 0.76 ms, 64 rows 2.3 ms, 128 rows
    3.6 ms per step.
    """
    _launch_topk(scores, counts, rows, out_idx, None, workspace, block, seq_lens, num_kv_heads, first_pass_done, fused)


def select_and_write(
    scores: torch.Tensor, counts: torch.Tensor, indptr: torch.Tensor, req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor, num_kv_heads: int, rows: int, scratch_idx: torch.Tensor,
    out_indices: torch.Tensor, workspace: torch.Tensor | None = None, block: int | None = None,
    seq_lens: torch.Tensor | None = None, first_pass_done: bool = False, fused: bool | None = None,
) -> None:
    """:func:`topk_rows` into ``scratch_idx`` fused with :func:`write_selected` into ``out_indices``."""
    write = (indptr, req_to_token, req_pool_indices, num_kv_heads, out_indices)
    _launch_topk(scores, counts, rows, scratch_idx, write, workspace, block, seq_lens, num_kv_heads, first_pass_done, fused)


def _launch_topk(
    scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor,
    write: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor] | None,
    workspace: torch.Tensor | None, block: int | None,
    seq_lens: torch.Tensor | None, num_kv_heads: int, first_pass_done: bool = False, fused: bool | None = None,
) -> None:
    L = scores.shape[1]
    kmax = out_idx.shape[1]
    if rows == 0 or L == 0 or kmax == 0:
        return
    assert scores.dtype == torch.float32 and scores.stride(1) == 1
    assert out_idx.dtype == torch.int32 and out_idx.stride(1) == 1
    assert rows <= scores.shape[0] and rows <= out_idx.shape[0] and rows <= counts.shape[0]
    if write is None:
        indptr, req_to_token, req_pool, out_indices = counts, counts, counts, counts  # unused
        kv_heads, stride_rr = num_kv_heads, 0
    else:
        indptr, req_to_token, req_pool, kv_heads, out_indices = write
        assert out_indices.dtype == torch.int32 and req_to_token.stride(1) == 1
        stride_rr = req_to_token.stride(0)
    lens = seq_lens if seq_lens is not None else counts  # unused without seq_lens
    splits = topk_splits(rows, L) if workspace is not None else 1
    num_warps, default_block = SINGLE_CONFIG if splits == 1 else SPLIT_CONFIG
    block = min(block or default_block, triton.next_power_of_2(triton.cdiv(L, splits)))
    assert not first_pass_done or (workspace is not None and seq_lens is not None), "pass 0 is counted per length"
    if workspace is None:  # one program a row; with a workspace the split kernels run, one split or more
        _topk_kernel[(rows,)](
            scores, counts, out_idx,
            indptr, req_to_token, req_pool, out_indices, lens,
            L, kmax, kv_heads,
            scores.stride(0), out_idx.stride(0), stride_rr,
            WRITE_INDICES=write is not None, BLOCK=block, HAS_LENS=seq_lens is not None, STAGES=select_stages(rows),
            num_warps=num_warps,
        )
        return
    assert workspace is not None and workspace.dtype == torch.int32
    assert workspace.numel() >= ROW_INTS * rows
    if fused is None:
        fused = fused_topk_fits(rows, splits, scores)
    if fused:
        assert splits == 1 or os.environ.get("TRITON_INTERPRET") != "1", "the interpreter cannot run a row's splits at once"
        _split_fused_kernel[(rows, splits)](
            scores, counts, workspace, out_idx,
            indptr, req_to_token, req_pool, out_indices, lens,
            L, kmax, kv_heads,
            scores.stride(0), out_idx.stride(0), stride_rr,
            FIRST=1 if first_pass_done else 0, SPLITS=splits, WRITE_INDICES=write is not None, BLOCK=block,
            RANGES_BLOCK=min(block, RANGES_BLOCK), HAS_LENS=seq_lens is not None, STAGES=select_stages(rows),
            num_warps=num_warps,
        )
        return
    for p in range(1 if first_pass_done else 0, 4):
        _split_hist_kernel[(rows, splits)](
            scores, counts, workspace, lens, L, kmax, kv_heads, scores.stride(0),
            P=p, SPLITS=splits, BLOCK=min(block, RANGES_BLOCK) if p == ATOMIC_FROM_PASS else block,
            HAS_LENS=seq_lens is not None, STAGES=select_stages(rows), num_warps=num_warps,
        )
    _split_compact_kernel[(rows, splits)](
        scores, counts, workspace, out_idx,
        indptr, req_to_token, req_pool, out_indices, lens,
        L, kmax, kv_heads,
        scores.stride(0), out_idx.stride(0), stride_rr,
        SPLITS=splits, WRITE_INDICES=write is not None, BLOCK=block, HAS_LENS=seq_lens is not None,
        STAGES=select_stages(rows), num_warps=num_warps,
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
