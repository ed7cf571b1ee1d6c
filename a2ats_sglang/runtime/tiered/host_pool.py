"""Offload mode's host KV pool: every token's K/V in pinned CPU memory, indexed by logical slot.

In offload mode SGLang's allocator, ``req_to_token`` and the radix tree deal in logical slots,
and the number of logical slots (what the scheduler admits against) is what this pool holds,
not what fits in HBM. The GPU keeps codes for every logical slot plus a hot buffer per running
request (:mod:`a2ats_sglang.kernels.hot_buffer`).

Layout ``[layers, slots, Hkv, d]`` for K and for V: one layer's pool is a contiguous
``[slots, Hkv, d]`` tensor, which the fetch and store kernels address through its device
mapping (pinned memory is mapped into the GPU's address space).
"""

from __future__ import annotations

import os
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from a2ats_sglang.runtime.preflight import GiB, Unsupported, free_ram, host_pool_bytes


class HostPoolError(Unsupported):
    """A host pool that cannot be made (a size too small to hold a token, pinning failed)."""


@dataclass(frozen=True)
class HostPoolPlan:
    slots: int  # logical token slots (slot 0 is SGLang's padding slot)
    bytes_per_token: int

    @property
    def nbytes(self) -> int:
        return self.slots * self.bytes_per_token


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V of one token over every layer."""
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def plan_host_pool(bytes_per_token: int, requested_gib: float | None, available_bytes: int | None = None) -> HostPoolPlan:
    """Slots for ``--a2ats-host-kv-gb`` (``None``: a share of the free RAM)."""
    budget = host_pool_bytes(requested_gib, free_ram() if available_bytes is None else available_bytes)
    slots = budget // bytes_per_token
    if slots < 2:
        raise HostPoolError(
            f"the host KV pool holds no token: {budget / GiB:.2f} GiB for {bytes_per_token} bytes per token"
        )
    return HostPoolPlan(slots, bytes_per_token)


REGISTER_PORTABLE_MAPPED = 1 | 2  # cudaHostRegisterPortable | cudaHostRegisterMapped


def prefault(t: torch.Tensor, chunk_bytes: int = 2**30) -> None:
    """Touch every page of ``t`` from several threads (ATen releases the GIL), so that
    registering it pins pages already there: the driver faults them in one thread, which took
    45 s for an 85 GiB pool on the H100 node."""
    flat = t.view(-1).view(torch.uint8)
    chunks = [flat[i : i + chunk_bytes] for i in range(0, flat.numel(), chunk_bytes)]
    if len(chunks) < 2:
        flat.zero_()
        return
    with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as pool:
        list(pool.map(torch.Tensor.zero_, chunks))


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Page-locked, device-mapped host memory of exactly this size.

    ``torch.empty(..., pin_memory=True)`` goes through PyTorch's caching host allocator, which
    rounds every allocation up to a power of two: a 47 GiB pool would pin 64 GiB. Ordinary
    memory registered with ``cudaHostRegister`` is pinned at its own size, and the GPU reads and
    writes it in place (UVA). It is unregistered when the returned tensor is collected (CUDA would
    otherwise refuse to register the same addresses again, error 712, once the allocator reuses
    them), so views of it must not outlive it: the pool that owns it keeps it.
    """
    t = torch.empty(shape, dtype=dtype)
    prefault(t)
    cudart = torch.cuda.cudart()
    ptr = t.data_ptr()
    err = int(cudart.cudaHostRegister(ptr, t.numel() * t.element_size(), REGISTER_PORTABLE_MAPPED))
    if err != 0:
        raise HostPoolError(
            f"pinning {t.numel() * t.element_size() / GiB:.1f} GiB of host memory failed (cudaError {err}); "
            "lower --a2ats-host-kv-gb"
        )
    weakref.finalize(t, cudart.cudaHostUnregister, ptr)
    return t


class HostKVPool:
    """K and V of every logical slot, every layer, in (pinned) host memory."""

    def __init__(self, plan: HostPoolPlan, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, pin: bool | None = None) -> None:
        pin = torch.cuda.is_available() if pin is None else pin
        shape = (num_layers, plan.slots, num_kv_heads, head_dim)
        # not zeroed: a slot is always written (its token's K/V) before anything reads it
        alloc = pinned_empty if pin else (lambda shape, dtype: torch.empty(shape, dtype=dtype))
        self.k = alloc(shape, dtype)
        self.v = alloc(shape, dtype)
        self.slots = plan.slots

    def layer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[slots, Hkv, d]`` K and V of one layer (what the kernels read and write)."""
        return self.k[layer_id], self.v[layer_id]

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
