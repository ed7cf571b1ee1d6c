"""Offload mode's prefix cache, registered as ``--radix-cache-backend a2ats-offload``.

SGLang's Python ``RadixCache`` serves offload mode as it is: its nodes hold the slots SGLang's
allocator hands out, which in offload mode are logical slots, so a cached prefix keeps its K/V in
the host pool and its codes on the GPU until eviction frees the slot (the next owner overwrites
both). What the factory adds is the choice: SGLang's default chain may pick another tree by
environment variable (``SGLANG_EXPERIMENTAL_CPP_RADIX_TREE``, ``SGLANG_ENABLE_UNIFIED_RADIX_TREE``),
while prefix staging relies on this one's behaviour — every match of one cached document ends
at the same node (``tests/test_staging_admission.py``), and a chunk's duplicate slots are freed
while the chunk is staged (``Staging.release``). The launcher selects it with ``--a2ats-offload``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglang.srt.mem_cache.base_prefix_cache import BasePrefixCache
    from sglang.srt.mem_cache.registry import TreeCacheBuildContext

from a2ats_sglang.runtime.preflight import RADIX_BACKEND


def create_offload_radix_cache(ctx: TreeCacheBuildContext) -> BasePrefixCache:
    from sglang.srt.mem_cache.registry import default_radix_cache_factory

    if ctx.disable_radix_cache:  # --disable-radix-cache: SGLang's ChunkCache, as always
        return default_radix_cache_factory(ctx)
    if ctx.is_hybrid_swa or ctx.is_hybrid_ssm or ctx.is_dsa or ctx.enable_hierarchical_cache:
        raise ValueError(f"--radix-cache-backend {RADIX_BACKEND} serves full-attention models without HiCache")
    from sglang.srt.mem_cache.radix_cache import RadixCache

    return RadixCache(ctx.params)


def register() -> None:
    """Idempotent: SGLang's registry refuses a name twice."""
    from sglang.srt.mem_cache.registry import register_radix_cache_backend, registered_radix_cache_backends

    if RADIX_BACKEND not in registered_radix_cache_backends():
        register_radix_cache_backend(RADIX_BACKEND, create_offload_radix_cache)
