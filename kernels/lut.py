"""The lookup table of a decode step, already reduced over each GQA group.

``out[j, g, c] = reduce_{h < G} Σ_d decoded[g, c, d] · q[g, d, j·G + h]`` (bf16 in, fp32 out,
reduce = max or mean), one ``j`` per (request, distance bucket). Scoring a token is then one
gather per (token, kv head) instead of ``G``, and the table is ``G`` times smaller, so at serving
batch sizes it stays in L2 while the score kernel gathers from it (Llama-3.1-8B shape, batch 32,
8 buckets, 4,096 codewords: 33.5 MB per layer instead of 134 MB).

Every program computes a fixed ``BLOCK_C × (BLOCK_J·G)`` tile over the whole of ``d`` in one
``tl.dot``, whatever the number of columns: a request's table is the same bits whoever shares
its batch, which SGLang's ``--enable-deterministic-inference`` promises (cuBLAS picks its
algorithm from the shapes). The reduction over the group is exact for ``max``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_C = 64
COLUMNS = 64  # query columns per program: BLOCK_J whole groups of next_power_of_2(G) heads


@triton.jit
def _folded_lut_kernel(
    a_ptr, b_ptr, out_ptr, C, J, D, group,
    stride_ah, stride_ac, stride_bh, stride_bd, stride_oj, stride_oh,
    REDUCE_MAX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr, G_P2: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    h = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col = tl.arange(0, BLOCK_J * G_P2)
    j = tl.program_id(2) * BLOCK_J + col // G_P2
    head = col % G_P2
    real = (j < J) & (head < group)  # [BLOCK_J·G_P2]
    d = tl.arange(0, BLOCK_D)
    a = tl.load(a_ptr + h * stride_ah + c[:, None] * stride_ac + d[None, :], mask=(c < C)[:, None] & (d < D)[None, :],
                other=0.0)
    b = tl.load(b_ptr + h * stride_bh + d[:, None] * stride_bd + (j * group + head)[None, :],
                mask=(d < D)[:, None] & real[None, :], other=0.0)
    acc = tl.dot(a, b, out_dtype=tl.float32)  # [BLOCK_C, BLOCK_J·G_P2]
    if REDUCE_MAX:
        acc = tl.where(real[None, :], acc, float("-inf"))
        folded = tl.max(tl.reshape(acc, (BLOCK_C, BLOCK_J, G_P2)), axis=2)
    else:
        acc = tl.where(real[None, :], acc, 0.0)
        folded = tl.sum(tl.reshape(acc, (BLOCK_C, BLOCK_J, G_P2)), axis=2) / group
    jj = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
    tl.store(out_ptr + jj[None, :].to(tl.int64) * stride_oj + h * stride_oh + c[:, None], folded,
             mask=(c < C)[:, None] & (jj < J)[None, :])


def folded_lookup_table(decoded: torch.Tensor, q: torch.Tensor, group: int, reduce: str = "max",
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """``decoded`` ``[Hkv, C, d]`` bf16 (rows contiguous), ``q`` ``[Hkv, d, J·G]`` bf16 (columns
    ``j·G + h`` contiguous) → ``[J, Hkv, C]`` float32: each (j, kv head, codeword) the ``max`` (or
    ``mean``) over the group's ``G`` query heads of their logits, each entry computed the same
    way for any ``J``."""
    heads, codewords, dim = decoded.shape
    cols = q.shape[2]
    assert reduce in ("max", "mean"), reduce
    assert q.shape[:2] == (heads, dim) and cols % group == 0, (q.shape, decoded.shape, group)
    assert decoded.stride(2) == 1 and q.stride(2) == 1
    groups = cols // group
    if out is None:
        out = torch.empty(groups, heads, codewords, dtype=torch.float32, device=q.device)
    assert out.shape == (groups, heads, codewords) and out.stride(2) == 1 and out.dtype == torch.float32
    if groups == 0:
        return out
    if not q.is_cuda:  # Triton's interpreter gets bf16 dots wrong; bf16 products are exact in fp32
        decoded, q = decoded.float(), q.float()
    g_p2 = triton.next_power_of_2(group)
    block_j = max(1, COLUMNS // g_p2)
    grid = (heads, triton.cdiv(codewords, BLOCK_C), triton.cdiv(groups, block_j))
    _folded_lut_kernel[grid](
        decoded, q, out, codewords, groups, dim, group,
        decoded.stride(0), decoded.stride(1), q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        REDUCE_MAX=reduce == "max", BLOCK_C=BLOCK_C, BLOCK_J=block_j, G_P2=g_p2,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
    )
    return out
