"""The lookup-table GEMM with a fixed tiling: each entry's sum does not depend on the batch.

``lut[h, c, n] = Σ_d decoded[h, c, d] · q[h, d, n]`` (bf16 in, fp32 out), one column per
(request, bucket, query head). cuBLAS picks its algorithm from the matrix shapes, and the
number of columns grows with the batch, so a request's lookup table (hence its scores, hence a
near-tie in its top-K) could change with whoever shares its batch. Here every program computes
a fixed ``BLOCK_C × BLOCK_N`` tile over the whole of ``d`` in one ``tl.dot``, whatever the
number of columns: used under SGLang's ``--enable-deterministic-inference``, which promises
batch-invariant results.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_C, BLOCK_N = 64, 64


@triton.jit
def _lut_kernel(
    a_ptr, b_ptr, out_ptr, C, N, D,
    stride_ah, stride_ac, stride_bh, stride_bd, stride_oh, stride_oc,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    h = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    d = tl.arange(0, BLOCK_D)
    a = tl.load(a_ptr + h * stride_ah + c[:, None] * stride_ac + d[None, :], mask=(c < C)[:, None] & (d < D)[None, :],
                other=0.0)
    b = tl.load(b_ptr + h * stride_bh + d[:, None] * stride_bd + n[None, :], mask=(d < D)[:, None] & (n < N)[None, :],
                other=0.0)
    acc = tl.dot(a, b, out_dtype=tl.float32)
    tl.store(out_ptr + h * stride_oh + c[:, None] * stride_oc + n[None, :], acc, mask=(c < C)[:, None] & (n < N)[None, :])


def lookup_table_gemm(decoded: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``decoded`` ``[H, C, d]`` bf16 (rows contiguous), ``q`` ``[H, d, N]`` bf16 (columns
    contiguous) → ``[H, C, N]`` float32, each entry computed the same way for any ``N``."""
    heads, codewords, dim = decoded.shape
    cols = q.shape[2]
    assert q.shape[:2] == (heads, dim) and decoded.stride(2) == 1 and q.stride(2) == 1
    out = torch.empty(heads, codewords, cols, dtype=torch.float32, device=q.device)
    if not q.is_cuda:  # Triton's interpreter gets bf16 dots wrong; bf16 products are exact in fp32
        decoded, q = decoded.float(), q.float()
    if cols == 0:
        return out
    grid = (heads, triton.cdiv(codewords, BLOCK_C), triton.cdiv(cols, BLOCK_N))
    _lut_kernel[grid](
        decoded, q, out, codewords, cols, dim,
        decoded.stride(0), decoded.stride(1), q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        BLOCK_C=BLOCK_C, BLOCK_N=BLOCK_N, BLOCK_D=max(16, triton.next_power_of_2(dim)),
    )
    return out
