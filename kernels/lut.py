"""The lookup table of a decode step, already reduced over each GQA group.

``out[j, g, c] = reduce_{h < G} Σ_d decoded[g, c, d] · q_w[j, g·G + h, d]`` (fp32 out, reduce =
max or mean), one ``j = b·nb + k`` per (request, distance bucket), where ``q_w`` is request
``b``'s post-RoPE query rotated by bucket ``k``'s angles and scaled, rounded to bf16: the WRoPE
query. The rotation happens in the kernel, on the tile the GEMM reads, so a layer's table is
one launch. Scoring a token is then one gather per (token, kv head) instead of ``G``, and the
table is ``G`` times smaller, so at serving batch sizes it stays in L2 while the score kernel
gathers from it (Llama-3.1-8B shape, batch 32, 8 buckets, 4,096 codewords: 33.5 MB per layer
instead of 134 MB).

Every program rotates its ``BLOCK_J·G`` query columns once, in registers, then walks a run of
``BLOCK_C``-codeword tiles, each one ``tl.dot`` over the whole of ``d``: the rotation's gathers
(four ``[d, columns]`` fp32 tiles) are paid once per run instead of once per 64 codewords,
which at batch 32 read ~1 GB of L2 per layer and made the table 5× slower than its bytes. The
tile is fixed whatever the batch, and the run length only decides which program computes a
tile: a request's table is the same bits whoever shares its batch, which SGLang's
``--enable-deterministic-inference`` promises (cuBLAS picks its algorithm from the shapes).
The reduction over the group is exact for ``max``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from a2ats_sglang.kernels.grid import sm_count
from a2ats_sglang.kernels.rotary import rope_pairs

BLOCK_C = 64
COLUMNS = 64  # query columns per program: BLOCK_J whole groups of next_power_of_2(G) heads
WAVES = 4  # programs per SM the codeword runs are split for (the rest of the grid is heads × columns)
MIN_TILES = 2  # codeword tiles a run walks at least: each run rotates its queries once


def codeword_runs(programs: int, tiles: int, sms: int) -> int:
    """How many runs the ``tiles`` codeword tiles are split into so that ``programs`` (heads ×
    column blocks) times the runs fill ``WAVES`` programs per SM, each run at least
    ``MIN_TILES`` long: fewer, longer runs re-rotate the queries less often. H200, 32 layers,
    4,096 codewords: at batch 1 (8 programs) one tile a run took 0.257 ms a step, two 0.181,
    four 0.167; batches 8 and 32 already walk two or more."""
    return max(1, min(triton.cdiv(tiles, MIN_TILES), triton.cdiv(WAVES * sms, programs)))


@triton.jit
def _round_to_bf16(x):
    """``x`` rounded to the nearest bf16, ties to even, kept in fp32: the GPU's own conversion,
    spelled out because Triton's interpreter truncates instead (finite inputs)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _folded_lut_kernel(
    a_ptr, q_ptr, cos_ptr, sin_ptr, out_ptr, C, J, D, group, buckets, rot_half, scale,
    stride_ah, stride_ac, stride_qb, stride_qh, stride_cb, stride_ck, stride_oj, stride_oh, tiles_per_run,
    REDUCE_MAX: tl.constexpr, NEOX: tl.constexpr, BF16_DOT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, G_P2: tl.constexpr, BLOCK_D: tl.constexpr,
):
    h = tl.program_id(0)
    col = tl.arange(0, BLOCK_J * G_P2)
    j = tl.program_id(2) * BLOCK_J + col // G_P2
    head = col % G_P2
    real = (j < J) & (head < group)  # [BLOCK_J·G_P2]
    d = tl.arange(0, BLOCK_D)
    # the WRoPE queries of these columns: query head h·G + head of request j // nb, bucket j % nb
    b = (j // buckets).to(tl.int64)
    q_col = q_ptr + b * stride_qb + (h * group + head) * stride_qh  # [cols]
    ang = b * stride_cb + (j % buckets) * stride_ck  # [cols]: each column's row of the angle tables
    rot = d < 2 * rot_half
    pair, freq, sign = rope_pairs(d, rot_half, NEOX)
    live = (d < D)[:, None] & real[None, :]
    x = tl.load(q_col[None, :] + d[:, None], mask=live, other=0.0).to(tl.float32)  # [BLOCK_D, cols]
    spun = live & rot[:, None]
    xp = tl.load(q_col[None, :] + pair[:, None], mask=spun, other=0.0).to(tl.float32)
    cs = tl.load(cos_ptr + ang[None, :] + freq[:, None], mask=spun, other=1.0)
    sn = tl.load(sin_ptr + ang[None, :] + freq[:, None], mask=spun, other=0.0)
    q_w = _round_to_bf16((x * cs + sign[:, None] * xp * sn) * scale)
    if BF16_DOT:  # exact: the values are bf16 already (Triton's interpreter gets bf16 dots wrong)
        q_w = q_w.to(tl.bfloat16)
    jj = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
    out_cols = out_ptr + jj[None, :].to(tl.int64) * stride_oj + h * stride_oh
    first = tl.program_id(1) * tiles_per_run
    for t in tl.range(first, first + tiles_per_run):  # a run past C is masked off
        c = t * BLOCK_C + tl.arange(0, BLOCK_C)
        a = tl.load(a_ptr + h * stride_ah + c[:, None] * stride_ac + d[None, :],
                    mask=(c < C)[:, None] & (d < D)[None, :], other=0.0)
        acc = tl.dot(a, q_w, out_dtype=tl.float32)  # [BLOCK_C, BLOCK_J·G_P2]
        if REDUCE_MAX:
            acc = tl.where(real[None, :], acc, float("-inf"))
            folded = tl.max(tl.reshape(acc, (BLOCK_C, BLOCK_J, G_P2)), axis=2)
        else:
            acc = tl.where(real[None, :], acc, 0.0)
            folded = tl.sum(tl.reshape(acc, (BLOCK_C, BLOCK_J, G_P2)), axis=2) / group
        tl.store(out_cols + c[:, None], folded, mask=(c < C)[:, None] & (jj < J)[None, :])


def folded_lookup_table(decoded: torch.Tensor, q_post: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                        group: int, neox: bool, scale: float = 1.0, reduce: str = "max",
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """``decoded`` ``[Hkv, C, d]`` bf16 (rows contiguous), ``q_post`` ``[bs, Hkv·G, d]`` (post-RoPE
    queries), ``cos``/``sin`` ``[bs, nb, rotary_dim / 2]`` fp32 (each bucket's rotation,
    :meth:`~a2ats_sglang.runtime.rotary.DeviceRotary.query_tables`; dimensions past the rotary
    ones are only scaled) → ``[bs·nb, Hkv, C]`` float32: each (request and bucket, kv head,
    codeword) the ``max`` (or ``mean``) over the group's ``G`` query heads of their logits,
    each entry computed the same way for any batch."""
    heads, codewords, dim = decoded.shape
    bs, q_heads, q_dim = q_post.shape
    buckets, rot_half = cos.shape[1], cos.shape[2]
    assert reduce in ("max", "mean"), reduce
    assert q_heads == heads * group and q_dim == dim and 2 * rot_half <= dim, (q_post.shape, decoded.shape, group)
    assert cos.shape[0] == bs and cos.stride() == sin.stride() and cos.stride(2) == 1
    assert decoded.stride(2) == 1 and q_post.stride(2) == 1
    groups = bs * buckets
    if out is None:
        out = torch.empty(groups, heads, codewords, dtype=torch.float32, device=q_post.device)
    assert out.shape == (groups, heads, codewords) and out.stride(2) == 1 and out.dtype == torch.float32
    if groups == 0:
        return out
    if not q_post.is_cuda:
        decoded = decoded.float()
    g_p2 = triton.next_power_of_2(group)
    block_j = max(1, COLUMNS // g_p2)
    tiles, column_blocks = triton.cdiv(codewords, BLOCK_C), triton.cdiv(groups, block_j)
    sms = sm_count(q_post)
    runs = codeword_runs(heads * column_blocks, tiles, sms)
    per_run = triton.cdiv(tiles, runs)
    grid = (heads, triton.cdiv(tiles, per_run), column_blocks)
    _folded_lut_kernel[grid](
        decoded, q_post, cos, sin, out, codewords, groups, dim, group, buckets, rot_half, scale,
        decoded.stride(0), decoded.stride(1), q_post.stride(0), q_post.stride(1), cos.stride(0), cos.stride(1),
        out.stride(0), out.stride(1), per_run,
        REDUCE_MAX=reduce == "max", NEOX=neox, BF16_DOT=q_post.is_cuda,
        BLOCK_C=BLOCK_C, BLOCK_J=block_j, G_P2=g_p2, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        num_warps=8,  # the rotation's four [d, columns] fp32 tiles
    )
    return out
