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

from a2ats_sglang.kernels.rotary import rope_pairs


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


SPLIT_CODES = 128  # codewords per program when a few keys are spread over many programs
# (block_n, block_c, num_warps, num_stages) for 1,024 keys or more (prefill chunks): H200, n=16384,
# Hkv=8, d=128, C=4096 took 3.1 ms a layer at tf32x3 (44 TFLOP/s), ~50 ms for each 8K-token
# chunk of Llama-8B's 32 layers. Built for sm_90 (d=128, rotation in the kernel) it spills 376
# bytes a thread and takes 224 KiB of shared memory; (64, 64, 8, 2) spills nothing in 160 KiB.
# benchmarks/kernel_tuning.py sweeps it
LARGE_CONFIG = (128, 64, 8, 2)
SMALL_WARPS = 4  # warps for fewer keys (decode steps; tiles of ≤ 64 keys): 4 spill ~750 bytes, 8 none
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _encode_kernel(
    k_ptr, kh_ptr, proj_ptr, half_norm_ptr, loc_ptr, codes_ptr, ws_ptr, cos_ptr, sin_ptr,
    n, num_codes, dim, split_codes, rot_half, scale, kv_heads, homes,
    stride_kn, stride_kh, stride_kd,
    stride_pl, stride_pg, stride_pd,
    stride_hl, stride_hg,
    stride_cl, stride_cs, stride_ch, stride_rn,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    SPLIT: tl.constexpr, ROTATE: tl.constexpr, NEOX: tl.constexpr, GATHER: tl.constexpr,
    LAYERED: tl.constexpr, K_DTYPE: tl.constexpr, HOMES: tl.constexpr,
):
    """Grid ``(key blocks, layers·Hkv, codebook splits)``; with ``LAYERED`` ``k_ptr`` holds each
    layer's key-pool address and every per-layer tensor has a layer stride. With ``HOMES``
    (gathered keys only) slots up to ``homes`` are read from ``k_ptr`` and slot ``s`` above from
    row ``s − homes`` of ``kh_ptr`` (the host pool's keys; with ``LAYERED`` each layer's address)."""
    pid_n = tl.program_id(0)
    col = tl.program_id(1)  # layer·Hkv + kv head
    g = col % kv_heads
    split = tl.program_id(2)
    if LAYERED:
        layer = (col // kv_heads).to(tl.int64)
        k_ptr = tl.load(k_ptr + layer).to(tl.pointer_type(K_DTYPE))
        if HOMES:
            kh_ptr = tl.load(kh_ptr + layer).to(tl.pointer_type(K_DTYPE))
        proj_ptr += layer * stride_pl
        half_norm_ptr += layer * stride_hl
        codes_ptr += layer * stride_cl
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    if GATHER:  # keys already in the pool, at their slots; slot −1 = nothing to encode
        key_row = tl.load(loc_ptr + rows, mask=row_ok, other=-1).to(tl.int64)
        row_ok = key_row >= 0
    else:
        key_row = rows.to(tl.int64)
    if HOMES:  # each key where its slot lives: a GPU home or its host row
        key_base = tl.where(key_row <= homes, k_ptr + key_row * stride_kn, kh_ptr + (key_row - homes) * stride_kn)
    else:
        key_base = k_ptr + key_row * stride_kn
    if tl.max(row_ok.to(tl.int32), axis=0) > 0:  # a whole block of idle rows skips the codebook
        _encode_rows(
            key_base, proj_ptr, half_norm_ptr, loc_ptr, codes_ptr, ws_ptr, cos_ptr, sin_ptr,
            rows, row_ok, g, col, split, n, num_codes, dim, split_codes, rot_half, scale,
            stride_kh, stride_kd, stride_pg, stride_pd, stride_hg, stride_cs, stride_ch, stride_rn,
            BLOCK_N, BLOCK_C, BLOCK_D, PRECISION, SPLIT, ROTATE, NEOX,
        )


@triton.jit
def _encode_rows(
    key_base, proj_ptr, half_norm_ptr, loc_ptr, codes_ptr, ws_ptr, cos_ptr, sin_ptr,
    rows, row_ok, g, col, split, n, num_codes, dim, split_codes, rot_half, scale,
    stride_kh, stride_kd, stride_pg, stride_pd, stride_hg, stride_cs, stride_ch, stride_rn,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    SPLIT: tl.constexpr, ROTATE: tl.constexpr, NEOX: tl.constexpr,
):
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < dim
    k_ptrs = key_base[:, None] + g * stride_kh + dd[None, :] * stride_kd  # key_base: each row's key
    k = tl.load(k_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_D]
    if ROTATE:  # un-rotate post-RoPE keys in registers: R(−pos)·k from the step's angle tables
        rot = dd < 2 * rot_half
        pair, freq, sign = rope_pairs(dd, rot_half, NEOX)
        m = row_ok[:, None] & (d_ok & rot)[None, :]
        kp = tl.load(key_base[:, None] + g * stride_kh + pair[None, :] * stride_kd,
                     mask=m, other=0.0).to(tl.float32)
        t = rows[:, None].to(tl.int64) * stride_rn + freq[None, :]
        c = tl.load(cos_ptr + t, mask=m, other=1.0)
        sn = tl.load(sin_ptr + t, mask=m, other=0.0)
        k = (k * c + sign[None, :] * kp * sn) * scale

    best = tl.full([BLOCK_N], float("-inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    proj_base = proj_ptr + g.to(tl.int64) * stride_pg
    c_lo = split * split_codes
    c_hi = tl.minimum(c_lo + split_codes, num_codes)
    for c0 in range(c_lo, c_hi, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        c_ok = cc < c_hi
        p = tl.load(proj_base + dd[:, None] * stride_pd + cc[None, :], mask=d_ok[:, None] & c_ok[None, :], other=0.0)
        # padded codewords get +inf half-norm, hence score −inf, and never win
        hn = tl.load(half_norm_ptr + g * stride_hg + cc, mask=c_ok, other=float("inf"))
        s = tl.dot(k, p, input_precision=PRECISION) - hn[None, :]  # [BLOCK_N, BLOCK_C]
        tile_best, tile_arg = tl.max(s, axis=1, return_indices=True, return_indices_tie_break_left=True)
        better = tile_best > best  # strict: an earlier tile keeps a tie (lowest index wins)
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, c0 + tile_arg, best_idx)

    if SPLIT:
        # (order-preserving score key, 65535 − index) packed in an int64: one max over the
        # splits picks the best score and, on a tie, the lowest index
        bits = best.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        packed = (key.to(tl.int64) << 32) | (65535 - best_idx).to(tl.int64)
        tl.store(ws_ptr + (split.to(tl.int64) * n + rows) * tl.num_programs(1) + col, packed, mask=row_ok)
    else:
        slot = tl.load(loc_ptr + rows, mask=row_ok, other=0).to(tl.int64)
        # int32 → int16 keeps the low 16 bits: codes ≥ 32768 read back negative, & 0xFFFF undoes it
        tl.store(codes_ptr + slot * stride_cs + g * stride_ch, best_idx.to(tl.int16), mask=row_ok)


@triton.jit
def _encode_reduce_kernel(ws_ptr, loc_ptr, codes_ptr, total, cols, kv_heads, splits, stride_cl, stride_cs, stride_ch,
                          BLOCK: tl.constexpr):
    """Best of the splits' packed (score, index) for each (key, layer·Hkv + kv head)."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < total
    acc = tl.load(ws_ptr + e, mask=ok, other=0)
    for s in range(1, splits):
        acc = tl.maximum(acc, tl.load(ws_ptr + s * total + e, mask=ok, other=0))
    code = 65535 - (acc & 0xFFFF).to(tl.int32)
    slot = tl.load(loc_ptr + e // cols, mask=ok, other=-1).to(tl.int64)
    col = e % cols
    # slot −1: an idle row whose workspace entries were never written
    tl.store(codes_ptr + (col // kv_heads).to(tl.int64) * stride_cl + slot * stride_cs + (col % kv_heads) * stride_ch,
             code.to(tl.int16), mask=ok & (slot >= 0))


LARGE_KEYS = 1024  # from this many keys on, LARGE_CONFIG's tiling


def key_tile(n: int) -> int:
    """The keys a program encodes when there are ``n`` (each tile is a compiled variant: the
    start-up warm-up, runtime/warmup.py, meets every one)."""
    return LARGE_CONFIG[0] if n >= LARGE_KEYS else max(16, min(64, triton.next_power_of_2(n)))


def split_key_limit(cols: int) -> int:
    """The most keys :func:`encode_keys` spreads over the codebook for ``cols`` = layers·Hkv
    (beyond, the plain grid has programs enough)."""
    return 128 * (511 // cols)


def encode_workspace(max_tokens: int, kv_heads: int, num_codes: int, device: torch.device | str) -> torch.Tensor:
    """Scratch that lets :func:`encode_keys` spread up to ``max_tokens`` keys over the codebook
    (decode steps: a handful of keys would otherwise leave the GPU idle). # int64"""
    return torch.empty(triton.cdiv(num_codes, SPLIT_CODES) * max_tokens * kv_heads, dtype=torch.int64, device=device)


class Unrotate(NamedTuple):
    """Keys arrive post-RoPE: un-rotate them in the kernel (``scale·R(θ)·k``) first."""

    cos: torch.Tensor  # [n, 1, rotary_dim / 2] float32, the angles of −position
    sin: torch.Tensor
    neox: bool
    scale: float


def encode_keys(
    k_pre: torch.Tensor, proj: torch.Tensor, half_norm: torch.Tensor, loc: torch.Tensor, codes: torch.Tensor,
    workspace: torch.Tensor | None = None, precision: str = "tf32x3",
    block_n: int | None = None, block_c: int | None = None, num_warps: int | None = None,
    num_stages: int | None = None,
    unrotate: Unrotate | None = None, gather: bool = False, layer_pointers: torch.Tensor | None = None,
    homes: int = 0, host_keys: torch.Tensor | None = None,
) -> None:
    """``codes[loc[i], g] = argmax_c k_pre[i, g]·proj[g, :, c] − half_norm[g, c]`` (lowest index on ties).

    ``k_pre`` ``[n, Hkv, d]`` (bf16/fp16/fp32, pre-RoPE), ``proj``/``half_norm`` from
    :func:`encode_projection`, ``loc`` ``[n]`` int32/int64 pool slots, ``codes`` ``[slots, Hkv]``
    int16 written in place. No host synchronisation, no allocation; ``n = 0`` launches nothing.
    With an :func:`encode_workspace` big enough for ``n`` keys, each program scores only
    ``SPLIT_CODES`` codewords and a second launch takes the best (the decode-step path).
    With ``unrotate`` the keys are post-RoPE and are un-rotated in registers first (saves the
    decode step a launch and a buffer per layer). With ``gather`` ``k_pre`` is the KV pool's key
    buffer ``[slots, Hkv, d]`` and key ``i`` is the one already stored at slot ``loc[i]``
    (``n = len(loc)``); ``loc[i] = −1`` skips it, and a block of skipped keys never reads the
    codebook (the decode step's deferred encoding, most of whose rows are idle).
    With ``layer_pointers`` (int64 ``[layers]``, each layer's key-pool address; needs
    ``gather``) one launch encodes the keys at ``loc`` in every layer: ``k_pre`` is one layer's
    pool (its shape, strides and dtype are every layer's), ``proj`` ``[layers, Hkv, d, C]``,
    ``half_norm`` ``[layers, Hkv, C]``, ``codes`` ``[layers, slots, Hkv]``.
    With ``homes`` > 0 (needs ``gather``) slots ``1 … homes`` are GPU-homed, read from ``k_pre``,
    and slot ``s`` above is row ``s − homes`` of ``host_keys`` (the host pool's keys, strided as
    ``k_pre``; with ``layer_pointers``, int64 ``[layers]`` of each layer's host-pool address).

    ``precision`` is Triton's ``input_precision`` of the GEMM: "tf32x3" (default) is fp32-accurate
    on tensor cores; "ieee" is plain fp32 FMA, which Triton runs ~40x slower on Hopper (H200,
    n=16384, Hkv=8, d=128, C=4096: 208 ms vs cuBLAS fp32 5.6 ms; tf32x3 3.1 ms); "tf32" is
    fastest (1.7 ms) and flips ~0.07% of codes to a near-tie.
    """
    _, kv_heads, dim = k_pre.shape
    n = loc.shape[0] if gather else k_pre.shape[0]
    layered = layer_pointers is not None
    if not layered:  # one layer: the same kernel with a layer axis of 1
        proj, half_norm, codes = proj[None], half_norm[None], codes[None]
    layers = proj.shape[0]
    num_codes = proj.shape[3]
    if n == 0:
        return
    assert not layered or (gather and layer_pointers.dtype == torch.int64 and layer_pointers.shape == (layers,)
                           and k_pre.dtype in _TL_DTYPES)
    if homes:
        assert gather and host_keys is not None, "GPU homes are for keys already in the pools"
        assert host_keys.shape == (layers,) if layered else host_keys.stride() == k_pre.stride(), "host keys' layout"
    else:
        host_keys = layer_pointers if layered else k_pre  # unused
    assert proj.shape[1:3] == (kv_heads, dim) and proj.stride(3) == 1, "proj must be [Hkv, d, C], last dim contiguous"
    assert half_norm.shape == (layers, kv_heads, num_codes) and half_norm.stride(2) == 1
    assert codes.dtype == torch.int16 and codes.shape[0] == layers and codes.shape[2] == kv_heads
    assert num_codes <= 65536, "codes are stored in 16 bits"
    assert precision in ("ieee", "tf32x3", "tf32"), precision
    splits = triton.cdiv(num_codes, SPLIT_CODES)
    # splitting the codebook pays while the plain grid leaves the GPU short of programs (H200,
    # Hkv=8, d=128, C=4096: n=1 14 µs vs 154 µs, n=1024 232 vs 381 µs; n=16384 3.6 vs 3.1 ms)
    cols = layers * kv_heads
    split = workspace is not None and splits > 1 and splits * n * cols <= workspace.numel() and n <= split_key_limit(cols)
    if n >= LARGE_KEYS:
        large_n, large_c, large_warps, large_stages = LARGE_CONFIG
        block_n, block_c = block_n or large_n, block_c or large_c
        num_warps, num_stages = num_warps or (large_warps if block_n == large_n else None), num_stages or large_stages
    block_n = block_n or key_tile(n)
    block_c, num_stages = block_c or 64, num_stages or 2
    if num_warps is None:
        num_warps = 8 if block_n >= 128 else SMALL_WARPS
    grid = (triton.cdiv(n, block_n), cols, splits if split else 1)
    if unrotate is not None:
        assert unrotate.cos.shape[0] >= n and unrotate.cos.stride(-1) == 1 and unrotate.cos.stride() == unrotate.sin.stride()
        cos, sin, rot_half, scale = unrotate.cos, unrotate.sin, unrotate.cos.shape[-1], unrotate.scale
    else:
        cos = sin = proj  # unused
        rot_half, scale = 0, 1.0
    _encode_kernel[grid](
        layer_pointers if layered else k_pre, host_keys, proj, half_norm, loc, codes, workspace if split else codes,
        cos, sin, n, num_codes, dim, SPLIT_CODES if split else num_codes, rot_half, scale, kv_heads, homes,
        k_pre.stride(0), k_pre.stride(1), k_pre.stride(2),
        proj.stride(0), proj.stride(1), proj.stride(2),
        half_norm.stride(0), half_norm.stride(1),
        codes.stride(0), codes.stride(1), codes.stride(2), cos.stride(0),
        BLOCK_N=block_n, BLOCK_C=block_c, BLOCK_D=max(16, triton.next_power_of_2(dim)),
        PRECISION=precision, SPLIT=split, ROTATE=unrotate is not None,
        NEOX=bool(unrotate.neox) if unrotate is not None else True, GATHER=gather,
        LAYERED=layered, K_DTYPE=_TL_DTYPES[k_pre.dtype] if layered else tl.float32, HOMES=homes > 0,
        num_warps=num_warps, num_stages=num_stages,
    )
    if split:
        assert workspace.dtype == torch.int64
        total = n * cols
        _encode_reduce_kernel[(triton.cdiv(total, 256),)](
            workspace, loc, codes, total, cols, kv_heads, splits, codes.stride(0), codes.stride(1), codes.stride(2),
            BLOCK=256,
        )
