"""Offload mode's registered prefix cache: SGLang's Python RadixCache over logical slots, whatever
SGLang's environment variables would pick, ChunkCache when radix is disabled, and a clear refusal
for model kinds it was not built for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from a2ats_sglang.runtime.tiered.radix import RADIX_BACKEND, create_offload_radix_cache, register


def context(**kw) -> SimpleNamespace:
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams

    params = CacheInitParams(disable=False, req_to_token_pool=None, page_size=1,
                             token_to_kv_pool_allocator=SimpleNamespace(free=lambda x: None, device="cpu"))
    base = {"params": params, "disable_radix_cache": False, "is_hybrid_swa": False, "is_hybrid_ssm": False,
            "is_dsa": False, "enable_hierarchical_cache": False, "effective_chunked_prefill_size": 8192,
            "server_args": SimpleNamespace()}
    return SimpleNamespace(**base | kw)


def test_the_factory_builds_sglangs_radix_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from sglang.srt.environ import envs
    from sglang.srt.mem_cache.chunk_cache import ChunkCache
    from sglang.srt.mem_cache.radix_cache import RadixCache

    monkeypatch.setattr(envs.SGLANG_ENABLE_UNIFIED_RADIX_TREE, "get", lambda: True)  # the default chain's other pick
    assert type(create_offload_radix_cache(context())) is RadixCache
    assert isinstance(create_offload_radix_cache(context(disable_radix_cache=True)), ChunkCache)
    with pytest.raises(ValueError, match="serves full-attention models without HiCache"):
        create_offload_radix_cache(context(is_hybrid_swa=True))


def test_registration_is_idempotent() -> None:
    from sglang.srt.mem_cache.registry import get_radix_cache_factory

    register()
    register()
    assert get_radix_cache_factory(RADIX_BACKEND) is create_offload_radix_cache
