"""RoPE rotations in one launch: un-rotate new keys, build WRoPE queries per distance bucket.

``out[n, j, h] = scale · R(θ_{n,j}) · x[n, h]`` where the caller supplies ``cos``/``sin`` of the
angles ``[n, nb, rotary_dim/2]`` (computed once per decode step, shared by every layer).
Dimensions past ``rotary_dim`` (partial rotary) are only scaled. The output strides are free,
so queries land directly in the lookup-table GEMM's ``[Hkv, d, bs·nb·G]`` layout and keys in
``[n, Hkv, d]``: in the decode graph this replaces about ten small torch kernels per layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def rope_pairs(d, rot_half, NEOX: tl.constexpr):
    """For each dimension ``d``: the dimension it rotates with, its frequency index, and the
    sign of the partner's term (``y = x·cos + sign·x_pair·sin``). Neox pairs ``i`` with
    ``i + rot/2``; the interleaved (GPT-J) layout pairs ``2i`` with ``2i + 1``."""
    if NEOX:
        first = d < rot_half
        pair = tl.where(first, d + rot_half, d - rot_half)
        freq = tl.where(first, d, d - rot_half)
        sign = tl.where(first, -1.0, 1.0)
    else:
        even = (d % 2) == 0
        pair = tl.where(even, d + 1, d - 1)
        freq = d // 2
        sign = tl.where(even, -1.0, 1.0)
    return pair, freq, sign


@triton.jit
def _rotate_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr,
    group, rot_half, dim, scale,
    sx_n, sx_h, sc_n, sc_b, so_n, so_b, so_g, so_i, so_d,
    NEOX: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n = tl.program_id(0)
    j = tl.program_id(1)
    h = tl.program_id(2)
    g = h // group
    i = h % group
    d = tl.arange(0, BLOCK_D)
    live = d < dim
    rot = d < 2 * rot_half
    pair, freq, sign = rope_pairs(d, rot_half, NEOX)
    base = x_ptr + n.to(tl.int64) * sx_n + h * sx_h
    x = tl.load(base + d, mask=live, other=0.0).to(tl.float32)
    xp = tl.load(base + pair, mask=live & rot, other=0.0).to(tl.float32)
    c = tl.load(cos_ptr + n.to(tl.int64) * sc_n + j * sc_b + freq, mask=live & rot, other=1.0)
    s = tl.load(sin_ptr + n.to(tl.int64) * sc_n + j * sc_b + freq, mask=live & rot, other=0.0)
    y = (x * c + sign * xp * s) * scale
    out = out_ptr + n.to(tl.int64) * so_n + j * so_b + g * so_g + i * so_i + d * so_d
    tl.store(out + 0, y.to(out_ptr.dtype.element_ty), mask=live)


def rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor,
    out_strides: tuple[int, int, int, int, int], group: int, neox: bool, scale: float = 1.0,
) -> None:
    """Rotate ``x`` ``[n, H, d]`` by the angles whose ``cos``/``sin`` are ``[n, nb, rot/2]``.

    Writes element ``(n, bucket j, head h = g·group + i, dim)`` at ``out`` offset
    ``n·s0 + j·s1 + g·s2 + i·s3 + dim·s4`` (``out_strides``). No allocation, no sync.
    """
    n, heads, dim = x.shape
    buckets, rot_half = cos.shape[1], cos.shape[2]
    if n == 0:
        return
    assert x.stride(2) == 1 and cos.stride(2) == 1 and cos.stride() == sin.stride()
    assert heads % group == 0 and 2 * rot_half <= dim
    _rotate_kernel[(n, buckets, heads)](
        x, cos, sin, out, group, rot_half, dim, scale,
        x.stride(0), x.stride(1), cos.stride(0), cos.stride(1), *out_strides,
        NEOX=neox, BLOCK_D=triton.next_power_of_2(dim),
    )
