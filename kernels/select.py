"""Per-row top-K of token scores, and the KV-pool indices of the picked tokens.

Rows are (request, kv head) pairs ``r = b·Hkv + g``. The top-K is a radix select: each score's
float bits map to an order-preserving 32-bit key, digits of the key (most significant first)
narrow down the key of the ``k``-th largest value and how many of its ties to take, and a
compaction writes the chosen columns in ascending order. It is exact (the same set as a stable
descending sort: ties at the threshold go to the lowest columns; −0.0 equals +0.0; ±inf are
ordinary values), deterministic (integer counts only; atomics add integers) and allocates
nothing, so it captures in a CUDA graph.

Two layouts:

- **one program per row** (:func:`topk_rows` without a workspace, or many rows): four 8-bit
  digit passes and the compaction in one launch;
- **split rows** (few long rows, with a :func:`topk_workspace`): each row spread over up to 64
  programs; digits of 8, 12 and 12 bits. The first digit's per-split histogram is filled by
  :func:`~a2ats_sglang.kernels.score.score_tokens` (pass it :func:`score_histogram`, then call
  with ``hist_ready=True``) or by one extra launch here; then pass 1, pass 2 and the
  compaction: three launches after the score kernel.

The 12-bit digits are counted with global integer atomics by only the keys that still match
the prefix (a few percent of a row after the first digit), not with ``tl.histogram``: Triton
lowers a histogram so that every thread tests every key against its ``bins / 32`` bins, which
for 4096 bins costs ~128 popcounts per key, more than the pass it would replace.

:func:`write_selected` turns the picks into indices of the KV pool viewed as
``[slots·Hkv, 1, d]`` (``slot·Hkv + g``), the layout a paged attention kernel reads with page
size 1 and one kv head.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

_SIGN: tl.constexpr = tl.constexpr(-2147483648)  # 0x80000000 as int32
FIRST_BINS = 256  # the first digit: 8 bits (the score kernel histograms it)
DIGIT_BINS = 4096  # digits 2 and 3 of the split path: 12 bits each
COARSE_BINS = 64  # the last digit's per-split counts are also kept in 64 groups of 64 bins
STATE = 4  # per (row, split): key prefix, keys still to take, keys above in earlier splits, own keys above the second digit


@triton.jit
def ordered_key(x):
    """Float → int32 whose signed order is the float order (−0 folded onto +0).

    ``ordered_key(x) ^ 0x80000000`` (the sign flipped) is in unsigned order; its top byte is
    the first digit of the radix select, which the score kernel histograms."""
    bits = x.to(tl.int32, bitcast=True)
    bits = tl.where(x == 0.0, 0, bits)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _digit_histogram(base, lo, hi, prefix, P: tl.constexpr, BLOCK: tl.constexpr):
    """Histogram of digit ``P`` (8 bits, most significant first) of the keys in ``[lo, hi)``
    whose higher digits equal ``prefix``'s. Works on u = key with the sign bit flipped
    (unsigned order = float order); arithmetic shifts are fine: digits are masked and
    prefixes compared shifted alike. # [256] int32"""
    shift: tl.constexpr = 24 - 8 * P
    hist = tl.zeros([256], tl.int32)
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < hi
        u = ordered_key(tl.load(base + offs, mask=ok, other=0.0)) ^ _SIGN
        if P > 0:
            ok = ok & ((u >> (shift + 8)) == (prefix >> (shift + 8)))
        hist += tl.histogram((u >> shift) & 0xFF, 256, mask=ok)
    return hist


@triton.jit
def _pick_digit(hist, remaining, NB: tl.constexpr):
    """Digit of the ``remaining``-th largest matching key, and how many larger ones precede it.

    at_least[v] = matching keys with digit ≥ v; the answer is the largest v with
    at_least[v] ≥ remaining.
    """
    bins = tl.arange(0, NB)
    at_least = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
    digit = tl.max(tl.where(at_least >= remaining, bins, -1), axis=0)
    return digit, tl.sum(tl.where(bins > digit, hist, 0), axis=0)


@triton.jit
def _compact(
    base, lo, hi, threshold, remaining, taken_ties, written,
    out_idx_row, req_to_token_row, out_indices_row, num_kv_heads, g,
    WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):
    """Write the columns in ``[lo, hi)`` with key > threshold, and those == threshold while
    fewer than ``remaining`` ties are taken overall, in ascending order from ``written``."""
    for start in range(lo, hi, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < hi
        key = ordered_key(tl.load(base + offs, mask=ok, other=0.0))
        above = ok & (key > threshold)
        tie = ok & (key == threshold)
        tie_rank = taken_ties + tl.cumsum(tie.to(tl.int32), axis=0) - 1
        take = above | (tie & (tie_rank < remaining))
        pos = written + tl.cumsum(take.to(tl.int32), axis=0) - 1
        tl.store(out_idx_row + pos, offs, mask=take)
        if WRITE_INDICES:
            slot = tl.load(req_to_token_row + offs, mask=take, other=0)
            tl.store(out_indices_row + pos, slot * num_kv_heads + g, mask=take)
        taken_ties += tl.sum(tie.to(tl.int32), axis=0)
        written += tl.sum(take.to(tl.int32), axis=0)


@triton.jit
def _topk_kernel(
    scores_ptr, counts_ptr, first_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr,
    L, kmax, num_kv_heads,
    stride_sr, stride_or, stride_rr,
    HAS_FIRST: tl.constexpr, WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program per row: four 8-bit histogram passes (the first read from ``first_ptr``
    ``[rows, 256]`` when the score kernel filled it), then the compaction."""
    row = tl.program_id(0)
    k = tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)
    if k > 0:
        base = scores_ptr + row.to(tl.int64) * stride_sr
        if HAS_FIRST:
            hist = tl.load(first_ptr + row.to(tl.int64) * 256 + tl.arange(0, 256))
        else:
            hist = _digit_histogram(base, 0, L, 0, 0, BLOCK)
        digit, above = _pick_digit(hist, k, 256)
        remaining = k - above  # how many of the keys matching the prefix to take
        prefix = digit << 24
        for p in tl.static_range(1, 4):
            digit, above = _pick_digit(_digit_histogram(base, 0, L, prefix, p, BLOCK), remaining, 256)
            remaining -= above
            prefix = prefix | (digit << (24 - 8 * p))
        b = row // num_kv_heads
        g = row % num_kv_heads
        pool = tl.load(req_pool_ptr + b).to(tl.int64) if WRITE_INDICES else 0
        dst = tl.load(indptr_ptr + row) if WRITE_INDICES else 0
        _compact(
            base, 0, L, prefix ^ _SIGN, remaining, tl.zeros([], tl.int32), tl.zeros([], tl.int32),
            out_idx_ptr + row.to(tl.int64) * stride_or, req_to_token_ptr + pool * stride_rr,
            out_indices_ptr + dst, num_kv_heads, g, WRITE_INDICES, BLOCK,
        )


# -- split rows: digits of 8 (score kernel or _split_first_kernel), 12 and 12 bits -------------


@triton.jit
def _split_first_kernel(scores_ptr, counts_ptr, first_ptr, L, kmax, split_len, stride_sr,
                        SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """The first digit's histogram of one split, when the score kernel did not make it."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    k = tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)
    if k > 0:
        lo = split * split_len
        hist = _digit_histogram(scores_ptr + row.to(tl.int64) * stride_sr, lo, tl.minimum(lo + split_len, L), 0, 0, BLOCK)
        tl.store(first_ptr + (row.to(tl.int64) * SPLITS + split) * 256 + tl.arange(0, 256), hist)


@triton.jit
def _split_pass1_kernel(
    scores_ptr, counts_ptr, first_ptr, total1_ptr, total2_ptr, last_ptr, coarse_ptr, state_ptr,
    L, kmax, split_len, stride_sr,
    SPLITS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Picks the first digit from every split's counts; adds the second digits of this split's
    keys that match it into the row's total (atomics); clears what pass 2 adds into."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    k = tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)
    if k > 0:
        s_idx = tl.arange(0, SPLITS)
        bins = tl.arange(0, 256)
        per_split = tl.load(first_ptr + (row.to(tl.int64) * SPLITS + s_idx[:, None]) * 256 + bins[None, :])  # [SPLITS, 256]
        d0, above = _pick_digit(tl.sum(per_split, axis=0), k, 256)
        earlier = (s_idx[:, None] < split) & (bins[None, :] > d0)
        above_before = tl.sum(tl.sum(tl.where(earlier, per_split, 0), axis=1), axis=0)
        # pass 2 adds into these; nothing reads them before it
        rs = row.to(tl.int64) * SPLITS + split
        tl.store(last_ptr + rs * 4096 + tl.arange(0, 4096), tl.zeros([4096], tl.int32))
        tl.store(coarse_ptr + rs * 64 + tl.arange(0, 64), tl.zeros([64], tl.int32))
        share: tl.constexpr = 4096 // SPLITS
        tl.store(total2_ptr + row.to(tl.int64) * 4096 + split * share + tl.arange(0, share), tl.zeros([share], tl.int32))
        base = scores_ptr + row.to(tl.int64) * stride_sr
        total1 = total1_ptr + row.to(tl.int64) * 4096
        lo = split * split_len
        hi = tl.minimum(lo + split_len, L)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            u = ordered_key(tl.load(base + offs, mask=offs < hi, other=0.0)) ^ _SIGN
            match = (offs < hi) & (((u >> 24) & 0xFF) == d0)
            tl.atomic_add(total1 + ((u >> 12) & 0xFFF), match.to(tl.int32), mask=match, sem="relaxed")
        tl.store(state_ptr + rs * 4, d0 << 24)
        tl.store(state_ptr + rs * 4 + 1, k - above)
        tl.store(state_ptr + rs * 4 + 2, above_before)


@triton.jit
def _split_pass2_kernel(
    scores_ptr, counts_ptr, total1_ptr, total2_ptr, last_ptr, coarse_ptr, state_ptr,
    L, kmax, split_len, stride_sr,
    SPLITS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Picks the second digit from the row's total; counts this split's keys above it (for later
    splits' offsets) and adds the third digits of those matching it into the row's total and
    this split's own counts, fine and coarse (atomics)."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    k = tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)
    if k > 0:
        rs = row.to(tl.int64) * SPLITS + split
        prefix = tl.load(state_ptr + rs * 4)
        remaining = tl.load(state_ptr + rs * 4 + 1)
        d0 = (prefix >> 24) & 0xFF
        d1, above = _pick_digit(tl.load(total1_ptr + row.to(tl.int64) * 4096 + tl.arange(0, 4096)), remaining, 4096)
        base = scores_ptr + row.to(tl.int64) * stride_sr
        total2 = total2_ptr + row.to(tl.int64) * 4096
        last = last_ptr + rs * 4096
        coarse = coarse_ptr + rs * 64
        own_above = tl.zeros([], tl.int32)
        lo = split * split_len
        hi = tl.minimum(lo + split_len, L)
        for start in range(lo, hi, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            u = ordered_key(tl.load(base + offs, mask=offs < hi, other=0.0)) ^ _SIGN
            top = (offs < hi) & (((u >> 24) & 0xFF) == d0)
            digit1 = (u >> 12) & 0xFFF
            own_above += tl.sum((top & (digit1 > d1)).to(tl.int32), axis=0)
            match = top & (digit1 == d1)
            one = match.to(tl.int32)
            digit2 = u & 0xFFF
            tl.atomic_add(total2 + digit2, one, mask=match, sem="relaxed")
            tl.atomic_add(last + digit2, one, mask=match, sem="relaxed")
            tl.atomic_add(coarse + (digit2 >> 6), one, mask=match, sem="relaxed")
        tl.store(state_ptr + rs * 4, prefix | (d1 << 12))
        tl.store(state_ptr + rs * 4 + 1, remaining - above)
        tl.store(state_ptr + rs * 4 + 3, own_above)


@triton.jit
def _split_compact_kernel(
    scores_ptr, counts_ptr, total1_ptr, total2_ptr, last_ptr, coarse_ptr, state_ptr, out_idx_ptr,
    indptr_ptr, req_to_token_ptr, req_pool_ptr, out_indices_ptr,
    L, kmax, split_len, num_kv_heads,
    stride_sr, stride_or, stride_rr,
    SPLITS: tl.constexpr, WRITE_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):
    """Picks the third digit (the threshold key is then exact), finds where this split's picks
    start (keys above the threshold and its ties in earlier splits), compacts; and clears this
    split's share of the row's second-digit total for the next call."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    k = tl.minimum(tl.minimum(tl.load(counts_ptr + row), kmax), L)
    if k > 0:
        rs = row.to(tl.int64) * SPLITS + split
        prefix = tl.load(state_ptr + rs * 4)
        remaining = tl.load(state_ptr + rs * 4 + 1)
        above_before = tl.load(state_ptr + rs * 4 + 2)
        s_idx = tl.arange(0, SPLITS)
        earlier = s_idx < split
        rows_s = row.to(tl.int64) * SPLITS + s_idx
        above_before += tl.sum(tl.load(state_ptr + rows_s * 4 + 3, mask=earlier, other=0), axis=0)
        d2, above = _pick_digit(tl.load(total2_ptr + row.to(tl.int64) * 4096 + tl.arange(0, 4096)), remaining, 4096)
        remaining -= above  # ties of the threshold to take
        # earlier splits' keys above d2: whole coarse groups above d2's, then d2's own group bin by bin
        group = d2 >> 6
        cb = tl.arange(0, 64)
        grouped = tl.load(coarse_ptr + rows_s[:, None] * 64 + cb[None, :])  # [SPLITS, 64]
        fine = tl.load(last_ptr + rows_s[:, None] * 4096 + group * 64 + cb[None, :])  # [SPLITS, 64]
        e = earlier[:, None]
        above_before += tl.sum(tl.sum(tl.where(e & (cb[None, :] > group), grouped, 0), axis=1), axis=0)
        above_before += tl.sum(tl.sum(tl.where(e & (group * 64 + cb[None, :] > d2), fine, 0), axis=1), axis=0)
        ties_before = tl.sum(tl.sum(tl.where(e & (group * 64 + cb[None, :] == d2), fine, 0), axis=1), axis=0)
        b = row // num_kv_heads
        g = row % num_kv_heads
        pool = tl.load(req_pool_ptr + b).to(tl.int64) if WRITE_INDICES else 0
        dst = tl.load(indptr_ptr + row) if WRITE_INDICES else 0
        lo = split * split_len
        _compact(
            scores_ptr + row.to(tl.int64) * stride_sr, lo, tl.minimum(lo + split_len, L), (prefix | d2) ^ _SIGN,
            remaining, ties_before, above_before + tl.minimum(ties_before, remaining),
            out_idx_ptr + row.to(tl.int64) * stride_or, req_to_token_ptr + pool * stride_rr,
            out_indices_ptr + dst, num_kv_heads, g, WRITE_INDICES, BLOCK,
        )
        # pass 2 was the last reader of total1: leave it zero for the next call (no clearing launch)
        share: tl.constexpr = 4096 // SPLITS
        tl.store(total1_ptr + row.to(tl.int64) * 4096 + split * share + tl.arange(0, share), tl.zeros([share], tl.int32))


# (num_warps, block) measured best on an H200 for the 8-bit four-pass kernels: one program per
# row, and one per split (the 8/12/12-bit split kernels keep them; unmeasured)
SINGLE_CONFIG = (8, 4096)
SPLIT_CONFIG = (4, 2048)
MIN_SPLIT_COLUMNS = 4096  # below this a split's histogram passes cost more than they save


def topk_splits(rows: int, L: int) -> int:
    """Programs per row for the split top-K: enough programs to fill the GPU, not too short a split."""
    splits = 1
    while splits < 64 and splits * 2 * MIN_SPLIT_COLUMNS <= L and rows * splits < 512:
        splits *= 2
    return splits


class SplitLayout(NamedTuple):
    """How a call on ``rows`` rows of ``L`` columns spreads each row over programs."""

    splits: int  # programs per row; 1: one program per row
    split_len: int  # columns per split: a multiple of ``block`` (and of the score kernel's block)
    block: int  # columns per loop step
    num_warps: int


def split_layout(rows: int, L: int, block: int | None = None) -> SplitLayout:
    """The layout :func:`topk_rows` uses with a workspace (``block``: the same override)."""
    splits = topk_splits(rows, L)
    num_warps, default_block = SINGLE_CONFIG if splits == 1 else SPLIT_CONFIG
    block = block or default_block
    if splits == 1:
        return SplitLayout(1, L, block, num_warps)
    return SplitLayout(splits, triton.cdiv(triton.cdiv(L, splits), block) * block, block, num_warps)


class TopkWorkspace(NamedTuple):
    """Scratch of the top-K with a workspace (:func:`topk_workspace`; allocate once)."""

    total1: torch.Tensor  # [rows_cap, 4096] int32: each row's second-digit counts; zero between calls
    scratch: torch.Tensor  # [n] int32: per-call counts and state, laid out by _ScratchViews


class _ScratchViews(NamedTuple):
    first: torch.Tensor  # [rows, splits, 256] first-digit counts per split (score_tokens' hist)
    total2: torch.Tensor  # [rows, 4096] each row's third-digit counts
    last: torch.Tensor  # [rows, splits, 4096] each split's third-digit counts
    coarse: torch.Tensor  # [rows, splits, 64] the same in groups of 64 bins
    state: torch.Tensor  # [rows, splits, STATE]


def _scratch_numel(rows: int, splits: int) -> int:
    if splits == 1:
        return rows * FIRST_BINS
    return rows * (DIGIT_BINS + splits * (FIRST_BINS + DIGIT_BINS + COARSE_BINS + STATE))


def _scratch_views(scratch: torch.Tensor, rows: int, splits: int) -> _ScratchViews:
    assert scratch.dtype == torch.int32 and scratch.numel() >= _scratch_numel(rows, splits), "workspace too small"
    sizes = [rows * splits * FIRST_BINS, rows * DIGIT_BINS, rows * splits * DIGIT_BINS, rows * splits * COARSE_BINS,
             rows * splits * STATE]
    if splits == 1:  # one program per row: only the first digit's counts
        sizes = [sizes[0], 0, 0, 0, 0]
    first, total2, last, coarse, state = scratch[: sum(sizes)].split(sizes)
    return _ScratchViews(
        first.view(rows, splits, FIRST_BINS), total2, last, coarse, state,
    )


def topk_workspace_nbytes(rows_cap: int, L: int) -> int:
    """Bytes of :func:`topk_workspace` (charged in the KV-pool sizing)."""
    most = max(_scratch_numel(r, topk_splits(r, L)) for r in range(1, rows_cap + 1))
    return 4 * (rows_cap * DIGIT_BINS + most)


def topk_workspace(rows_cap: int, L: int, device: torch.device | str) -> TopkWorkspace:
    """Scratch for :func:`topk_rows` on up to ``rows_cap`` rows of ``L`` columns (allocate once).

    ``total1`` starts at zero and every call leaves it so (the compaction clears it), at the
    same place per row whatever the batch: no clearing launch.
    """
    most = max(_scratch_numel(r, topk_splits(r, L)) for r in range(1, rows_cap + 1))
    return TopkWorkspace(
        torch.zeros(rows_cap, DIGIT_BINS, dtype=torch.int32, device=device),
        torch.empty(most, dtype=torch.int32, device=device),
    )


def score_histogram(workspace: TopkWorkspace, rows: int, L: int, block: int | None = None) -> tuple[torch.Tensor, int]:
    """The first-digit histogram ``score_tokens(..., hist=, split_len=)`` fills for a top-K
    with this workspace on ``rows`` rows of ``L`` columns. # [rows, splits, 256] int32, split_len

    Then call :func:`topk_rows` / :func:`select_and_write` with ``hist_ready=True`` and the same
    ``rows`` and ``block``.
    """
    layout = split_layout(rows, L, block)
    return _scratch_views(workspace.scratch, rows, layout.splits).first, layout.split_len


def topk_rows(
    scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor,
    workspace: TopkWorkspace | None = None, block: int | None = None, hist_ready: bool = False,
) -> None:
    """Columns of the ``counts[r]`` largest scores of each row ``r < rows`` into ``out_idx[r, :counts[r]]``.

    ``scores`` ``[rows_cap, L]`` float32, ``counts`` ``[rows_cap]`` int32 (clamped to
    ``min(kmax, L)``), ``out_idx`` ``[rows_cap, kmax]`` int32. Ties at the threshold go to the
    lowest columns; ±inf are ordinary values (−0.0 equals +0.0). Order within a row is
    ascending column; entries past ``counts[r]`` are left untouched. No host sync, no allocation.

    Without ``workspace`` one program handles a whole row (one launch; fine for many rows).
    With a :func:`topk_workspace` buffer few long rows are each split over up to 64 programs:
    three launches when ``hist_ready`` (:func:`score_histogram` was filled by the score kernel
    just before, on these scores), four otherwise; many rows still get one program each (one
    launch, reading the first digit's counts from the score kernel when ``hist_ready``).
    Timings of the 8/12/12-bit split path: unmeasured. The 8-bit four-pass split path it
    replaces, H200, CUDA graph, all counts = k: 8×131072, k=4096: 48 µs split / 650 µs single /
    85 µs ``torch.topk``; 8×32768, k=2048: 34 / 100 / 63 µs; 512×8192, k=512: 85 µs (single) /
    120 µs; 256×32768, k=2048: 186 / 180 µs; 64×131072, k=4096: 194 µs split / 162 µs ``torch.topk``.
    """
    _launch_topk(scores, counts, rows, out_idx, None, workspace, block, hist_ready)


def select_and_write(
    scores: torch.Tensor, counts: torch.Tensor, indptr: torch.Tensor, req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor, num_kv_heads: int, rows: int, scratch_idx: torch.Tensor,
    out_indices: torch.Tensor, workspace: TopkWorkspace | None = None, block: int | None = None,
    hist_ready: bool = False,
) -> None:
    """:func:`topk_rows` into ``scratch_idx`` fused with :func:`write_selected` into ``out_indices``."""
    write = (indptr, req_to_token, req_pool_indices, num_kv_heads, out_indices)
    _launch_topk(scores, counts, rows, scratch_idx, write, workspace, block, hist_ready)


def _launch_topk(
    scores: torch.Tensor, counts: torch.Tensor, rows: int, out_idx: torch.Tensor,
    write: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor] | None,
    workspace: TopkWorkspace | None, block: int | None, hist_ready: bool,
) -> None:
    L = scores.shape[1]
    kmax = out_idx.shape[1]
    if rows == 0 or L == 0 or kmax == 0:
        return
    assert scores.dtype == torch.float32 and scores.stride(1) == 1
    assert out_idx.dtype == torch.int32 and out_idx.stride(1) == 1
    assert rows <= scores.shape[0] and rows <= out_idx.shape[0] and rows <= counts.shape[0]
    assert workspace is not None or not hist_ready, "hist_ready needs the workspace the score kernel wrote"
    if write is None:
        indptr, req_to_token, req_pool, kv_heads, out_indices = counts, counts, counts, 1, counts  # unused
        stride_rr = 0
    else:
        indptr, req_to_token, req_pool, kv_heads, out_indices = write
        assert out_indices.dtype == torch.int32 and req_to_token.stride(1) == 1
        stride_rr = req_to_token.stride(0)
    if workspace is None:
        num_warps, default_block = SINGLE_CONFIG
        layout = SplitLayout(1, L, block or default_block, num_warps)
    else:
        layout = split_layout(rows, L, block)
    splits, split_len, block, num_warps = layout
    if splits == 1:
        first = _scratch_views(workspace.scratch, rows, 1).first if hist_ready else counts  # unused without
        _topk_kernel[(rows,)](
            scores, counts, first, out_idx,
            indptr, req_to_token, req_pool, out_indices,
            L, kmax, kv_heads,
            scores.stride(0), out_idx.stride(0), stride_rr,
            HAS_FIRST=hist_ready, WRITE_INDICES=write is not None, BLOCK=block, num_warps=num_warps,
        )
        return
    assert rows <= workspace.total1.shape[0] and workspace.total1.is_contiguous()
    ws = _scratch_views(workspace.scratch, rows, splits)
    grid = (rows, splits)
    common = dict(SPLITS=splits, BLOCK=block, num_warps=num_warps)
    if not hist_ready:
        _split_first_kernel[grid](scores, counts, ws.first, L, kmax, split_len, scores.stride(0), **common)
    _split_pass1_kernel[grid](
        scores, counts, ws.first, workspace.total1, ws.total2, ws.last, ws.coarse, ws.state,
        L, kmax, split_len, scores.stride(0), **common,
    )
    _split_pass2_kernel[grid](
        scores, counts, workspace.total1, ws.total2, ws.last, ws.coarse, ws.state,
        L, kmax, split_len, scores.stride(0), **common,
    )
    _split_compact_kernel[grid](
        scores, counts, workspace.total1, ws.total2, ws.last, ws.coarse, ws.state, out_idx,
        indptr, req_to_token, req_pool, out_indices,
        L, kmax, split_len, kv_heads,
        scores.stride(0), out_idx.stride(0), stride_rr,
        WRITE_INDICES=write is not None, **common,
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
