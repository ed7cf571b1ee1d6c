"""Key encoding: the code of each new pre-RoPE key, written into the code pool.

:func:`a2ats_sglang.method.vq.encode` computes ``argmin_j ‖kL − c'_j‖²``. Expanding the square
and dropping ``‖kL‖²`` (constant per key) leaves ``argmax_j k·(L c'_jᵀ) − ½‖c'_j‖²``, so with
``proj = L c'ᵀ`` folded once at load time the kernel is one GEMM against the codebook with a
running argmax, never materialising the ``[n, C]`` score matrix.

Codes are stored as the low 16 bits of the index in an int16 pool (codebooks up to 65536
entries); readers undo the sign with ``& 0xFFFF``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class EncodeProjection(NamedTuple):
    proj: torch.Tensor  # [Hkv, d, C] float32, contiguous: L c'ᵀ
    half_norm: torch.Tensor  # [Hkv, C] float32: ½‖c'_j‖²


def encode_projection(chol: torch.Tensor, centroids_z: torch.Tensor) -> EncodeProjection:
    """Fold the whitening into the codebook once: ``proj = L c'ᵀ``, ``half_norm = ½‖c'‖²``.

    ``chol`` ``[Hkv, d, d]``, ``centroids_z`` ``[Hkv, C, d]`` (whitened centroids) of one layer.
    """
    c = centroids_z.float()
    proj = torch.bmm(chol.float(), c.transpose(1, 2)).contiguous()  # [Hkv, d, C]
    half_norm = (0.5 * c.square().sum(-1)).contiguous()  # [Hkv, C]
    return EncodeProjection(proj, half_norm)


@triton.jit
def _encode_kernel(
    k_ptr, proj_ptr, half_norm_ptr, loc_ptr, codes_ptr,
    n, num_codes, dim,
    stride_kn, stride_kh, stride_kd,
    stride_pg, stride_pd,
    stride_hg,
    stride_cs, stride_ch,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < dim
    k_ptrs = k_ptr + rows[:, None].to(tl.int64) * stride_kn + g * stride_kh + dd[None, :] * stride_kd
    k = tl.load(k_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_D]

    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    proj_base = proj_ptr + g.to(tl.int64) * stride_pg
    for c0 in range(0, num_codes, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        c_ok = cc < num_codes
        p = tl.load(proj_base + dd[:, None] * stride_pd + cc[None, :], mask=d_ok[:, None] & c_ok[None, :], other=0.0)
        # padded codewords get +inf half-norm, hence score −inf, and never win
        hn = tl.load(half_norm_ptr + g * stride_hg + cc, mask=c_ok, other=float("inf"))
        s = tl.dot(k, p, input_precision=PRECISION) - hn[None, :]  # [BLOCK_N, BLOCK_C]
        tile_best, tile_arg = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best > best  # strict: an earlier tile keeps a tie (lowest index wins)
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, c0 + tile_arg, best_idx)

    slot = tl.load(loc_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    # int32 → int16 keeps the low 16 bits: codes ≥ 32768 read back negative, & 0xFFFF undoes it
    tl.store(codes_ptr + slot * stride_cs + g * stride_ch, best_idx.to(tl.int16), mask=row_ok)


def encode_keys(
    k_pre: torch.Tensor, proj: torch.Tensor, half_norm: torch.Tensor, loc: torch.Tensor, codes: torch.Tensor,
    precise: bool = True, block_n: int = 64, block_c: int = 128,
) -> None:
    """``codes[loc[i], g] = argmax_c k_pre[i, g]·proj[g, :, c] − half_norm[g, c]`` (lowest index on ties).

    ``k_pre`` ``[n, Hkv, d]`` (bf16/fp16/fp32, pre-RoPE), ``proj``/``half_norm`` from
    :func:`encode_projection`, ``loc`` ``[n]`` int32/int64 pool slots, ``codes`` ``[slots, Hkv]``
    int16 written in place. ``precise=False`` uses TF32 for the GEMM (faster, may flip near-ties).
    No host synchronisation, no allocation; ``n = 0`` launches nothing.
    """
    n, kv_heads, dim = k_pre.shape
    num_codes = proj.shape[2]
    if n == 0:
        return
    assert proj.shape[:2] == (kv_heads, dim) and proj.stride(2) == 1, "proj must be [Hkv, d, C], last dim contiguous"
    assert half_norm.shape == (kv_heads, num_codes) and half_norm.stride(1) == 1
    assert codes.dtype == torch.int16 and codes.shape[1] == kv_heads
    assert num_codes <= 65536, "codes are stored in 16 bits"
    grid = (triton.cdiv(n, block_n), kv_heads)
    _encode_kernel[grid](
        k_pre, proj, half_norm, loc, codes,
        n, num_codes, dim,
        k_pre.stride(0), k_pre.stride(1), k_pre.stride(2),
        proj.stride(0), proj.stride(1),
        half_norm.stride(0),
        codes.stride(0), codes.stride(1),
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        PRECISION="ieee" if precise else "tf32",
    )
