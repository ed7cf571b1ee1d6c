"""Token scoring: every context token of every (request, kv head) scored from its code.

Reference: :func:`a2ats_sglang.method.wrope.wrope_code_logits` (look each token's code up in
its distance bucket's table) followed by the group reduction of
:func:`a2ats_sglang.method.selection.select_per_kv_head`; the reduction is already in the table
(:mod:`a2ats_sglang.kernels.lut`), so a token costs one gather per kv head. Protected tokens
(sinks, local window) score ``+inf`` so any top-K keeps them; invisible ones ``−inf``. The
scores feed :mod:`a2ats_sglang.kernels.select`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2ats_sglang.kernels.grid import sm_count
from a2ats_sglang.kernels.select import _ROW_INTS, _SIGN, _SPLIT_ALIGN, SPLIT_ALIGN, _ordered_key, topk_splits


@triton.jit
def _score_kernel(
    lut_ptr, codes_ptr, req_to_token_ptr, req_pool_ptr, seq_lens_ptr, edges_ptr, out_ptr, ws_ptr,
    num_kv_heads, num_buckets, L, sinks, window, runs,
    stride_lb, stride_lk, stride_lg, stride_lc,
    stride_cs, stride_ch,
    stride_rr,
    stride_or,
    BLOCK: tl.constexpr, PAD: tl.constexpr, SPLITS: tl.constexpr, FIRST_PASS: tl.constexpr, HEADS: tl.constexpr,
):
    """One program per (request, ``HEADS`` kv heads, run): a run is a ``1/runs`` share of one
    top-K split of the request's own length, walked ``BLOCK`` columns at a time. With one head
    a program sums its histogram in registers and adds it once; with several, each block loads
    its slots and buckets once for all of them, the code rows (one 16-byte row a token holds
    every head's code) come from L1 after the first head, and each head's block histogram is
    added at once (its few non-zero bins: the top digit of a score spreads over a handful)."""
    heads_groups = num_kv_heads // HEADS
    b = tl.program_id(0) // heads_groups
    g0 = (tl.program_id(0) % heads_groups) * HEADS
    split = tl.program_id(1) // runs
    run = tl.program_id(1) % runs
    seq_len = tl.load(seq_lens_ptr + b).to(tl.int32)
    row_len = tl.minimum(seq_len, L)
    pool = tl.load(req_pool_ptr + b).to(tl.int64)
    lut_req = lut_ptr + b.to(tl.int64) * stride_lb
    split_len = tl.cdiv(tl.cdiv(row_len, SPLITS), _SPLIT_ALIGN) * _SPLIT_ALIGN  # the top-K's split
    run_len = tl.cdiv(tl.cdiv(split_len, runs), BLOCK) * BLOCK
    lo = split * split_len + run * run_len
    hi = tl.minimum(tl.minimum(lo + run_len, (split + 1) * split_len), row_len)
    hist = tl.zeros([256], tl.int32)
    for start in range(lo, hi, BLOCK):
        t = start + tl.arange(0, BLOCK)
        visible = t < hi
        protected = (t < sinks) | (t >= seq_len - window)
        scored = visible & ~protected
        slot = tl.load(req_to_token_ptr + pool * stride_rr + t, mask=scored, other=0).to(tl.int64)
        dist = seq_len - 1 - t
        bucket = tl.zeros([BLOCK], tl.int32)  # distances below edges[1] (window included) → 0
        for k in range(1, num_buckets):
            bucket += (dist >= tl.load(edges_ptr + k)).to(tl.int32)
        for h in tl.static_range(HEADS):
            g = g0 + h
            row = b * num_kv_heads + g
            code = tl.load(codes_ptr + slot * stride_cs + g * stride_ch, mask=scored, other=0).to(tl.int32) & 0xFFFF
            acc = tl.load(lut_req + g.to(tl.int64) * stride_lg + bucket.to(tl.int64) * stride_lk
                          + code.to(tl.int64) * stride_lc, mask=scored)
            res = tl.where(protected, float("inf"), acc)
            tl.store(out_ptr + row.to(tl.int64) * stride_or + t, res, mask=visible)
            if FIRST_PASS:  # the top-K's pass 0: the top digits of these scores, into their split's counts
                counts = tl.histogram(((_ordered_key(res) ^ _SIGN) >> 24) & 0xFF, 256, mask=visible)
                if HEADS == 1:
                    hist += counts
                else:
                    bins = ws_ptr + row.to(tl.int64) * _ROW_INTS + split * 256 + tl.arange(0, 256)
                    tl.atomic_add(bins, counts, mask=counts > 0, sem="relaxed")
    if FIRST_PASS and HEADS == 1:
        bins = ws_ptr + (b * num_kv_heads + g0).to(tl.int64) * _ROW_INTS + split * 256 + tl.arange(0, 256)
        tl.atomic_add(bins, hist, mask=hist > 0, sem="relaxed")
    if PAD:  # columns past the context, shared out over the request's programs: −inf
        programs = SPLITS * runs
        for h in tl.static_range(HEADS):
            out_row = out_ptr + (b * num_kv_heads + g0 + h).to(tl.int64) * stride_or
            for start in range(row_len + tl.program_id(1) * BLOCK, L, programs * BLOCK):
                t = start + tl.arange(0, BLOCK)
                tl.store(out_row + t, tl.full([BLOCK], float("-inf"), tl.float32), mask=t < L)


RUN_TARGET = 32  # programs per SM the runs are sized for: enough warps in flight for the gathers
HEADS_PER_PROGRAM = 1  # kv heads a program scores (the largest power of two up to this dividing Hkv)
SCORE_WARPS = 4  # warps a program runs (Triton's default; benchmarks/score_probe.py sweeps it)


def program_heads(kv_heads: int) -> int:
    """Kv heads per program: the largest power of two ≤ :data:`HEADS_PER_PROGRAM` dividing ``kv_heads``."""
    heads = 1
    while 2 * heads <= HEADS_PER_PROGRAM and kv_heads % (2 * heads) == 0:
        heads *= 2
    return heads


def score_runs(rows: int, splits: int, L: int, block: int, sms: int) -> int:
    """Runs per top-K split for ``rows`` programs' worth of rows (requests × head groups): the
    fewest that still put ``RUN_TARGET`` programs on every SM (longer runs reuse more of the
    row's table from L1), never more than a split's blocks."""
    blocks_per_split = max(1, triton.cdiv(triton.cdiv(L, splits), block))
    return max(1, min(blocks_per_split, triton.cdiv(RUN_TARGET * sms, rows * splits)))


def score_tokens(
    lut: torch.Tensor, codes: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor, edges: torch.Tensor, sinks: int, window: int, out: torch.Tensor,
    block: int = 512, pad: bool = True, topk_workspace: torch.Tensor | None = None,
) -> None:
    """Score tokens ``[0, L)`` of each row ``b·Hkv + g`` into ``out[:bs·Hkv, :L]`` (float32).

    ``lut`` ``[bs, nb, Hkv, C]`` float32, any strides: kv head ``g``'s group-reduced table of
    bucket ``k`` (:func:`a2ats_sglang.kernels.lut.folded_lookup_table`).
    ``codes`` ``[slots, Hkv]`` int16, ``req_to_token`` ``[R, max_ctx]`` int32,
    ``req_pool_indices`` and ``seq_lens`` ``[bs]`` (context length including the current
    token), ``edges`` ``[nb]`` int32 bucket edges (``edges[0] = window``). ``t ≥ len`` → −inf
    (left untouched with ``pad=False``: a top-K given ``seq_lens`` never reads them);
    sinks and the last ``window`` tokens → +inf; otherwise ``lut[b, bucket(len − 1 − t), g, code]``.
    With ``topk_workspace`` (:func:`~a2ats_sglang.kernels.select.topk_workspace`) each program
    also counts the top digits of its scores into the top-K's pass-0 histograms (integer atomics:
    the counts do not depend on the order), and the top-K called with ``first_pass_done`` skips
    that pass over the scores. Each program scores :func:`program_heads` kv heads of one request
    over a run of blocks (:func:`score_runs`): one block per program while the GPU needs every
    program it can get (batch 1), longer runs once the rows alone fill it. No host
    synchronisation, no allocation.
    """
    kv_heads = codes.shape[1]
    bs, num_buckets, lut_kv_heads, _ = lut.shape
    L = out.shape[1]
    if bs == 0 or L == 0:
        return
    assert lut_kv_heads == kv_heads and edges.shape[0] == num_buckets
    assert out.stride(1) == 1 and req_to_token.stride(1) == 1
    assert out.shape[0] >= bs * kv_heads and out.dtype == torch.float32 and lut.dtype == torch.float32
    first_pass = topk_workspace is not None
    if first_pass:  # runs of whole blocks inside one split of the top-K
        assert SPLIT_ALIGN % block == 0, (block, SPLIT_ALIGN)
    splits = topk_splits(bs * kv_heads, L) if first_pass else 1
    heads = program_heads(kv_heads)
    runs = score_runs(bs * kv_heads // heads, splits, L, block, sm_count(out))
    _score_kernel[(bs * kv_heads // heads, splits * runs)](
        lut, codes, req_to_token, req_pool_indices, seq_lens, edges, out, topk_workspace if first_pass else out,
        kv_heads, num_buckets, L, sinks, window, runs,
        *lut.stride(),
        codes.stride(0), codes.stride(1),
        req_to_token.stride(0),
        out.stride(0),
        BLOCK=block, PAD=pad, SPLITS=splits, FIRST_PASS=first_pass, HEADS=heads,
        num_warps=SCORE_WARPS,
    )
