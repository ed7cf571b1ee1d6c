"""Offload mode's settings: flags, what it needs from SGLang's flags, the request-pool cap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from a2ats_sglang.runtime.config import A2ATSConfig, ConfigError
from a2ats_sglang.runtime.flags import split_argv
from a2ats_sglang.runtime.memory import OffloadPlan
from a2ats_sglang.runtime.tiered.plan import set_plan, staging_tokens
from a2ats_sglang.runtime.preflight import Unsupported, check_settings


def test_flags_parse_and_bad_sizes_are_refused() -> None:
    split = split_argv(["--a2ats-offload", "--a2ats-host-kv-gb", "12.5", "--port", "1"])
    assert split.config.offload and split.config.host_kv_gb == 12.5 and split.rest == ["--port", "1"]
    assert not split_argv([]).config.offload
    with pytest.raises(ConfigError, match="must be positive"):
        A2ATSConfig(offload=True, host_kv_gb=0)
    with pytest.raises(ConfigError, match="sizes the host KV pool of --a2ats-offload"):
        A2ATSConfig(host_kv_gb=4)
    assert split_argv(["--a2ats-offload", "--a2ats-offload-cache", "shared"]).config.offload_cache == "shared"
    assert split_argv(["--a2ats-offload"]).config.offload_cache == "buffers"
    with pytest.raises(ConfigError, match="chooses the GPU cache of --a2ats-offload"):
        A2ATSConfig(offload_cache="shared")
    with pytest.raises(ConfigError, match="must be one of"):
        A2ATSConfig(offload=True, offload_cache="lru")
    tiers = ["--a2ats-offload", "--a2ats-offload-cache", "shared"]
    assert split_argv(tiers).config.gpu_homes == 0  # off
    assert split_argv([*tiers, "--a2ats-gpu-homes", "--port", "1"]).config.gpu_homes == -1  # as many as fit
    assert split_argv([*tiers, "--a2ats-gpu-homes", "5000"]).config.gpu_homes == 5000  # at most that many


def args(**kw) -> SimpleNamespace:
    base = {"disable_radix_cache": False, "enable_mixed_chunk": False, "page_size": 1, "enable_hierarchical_cache": False,
            "radix_cache_backend": None}
    return SimpleNamespace(**base | kw)


def test_server_flags_offload_cannot_serve_with_are_named() -> None:
    on = A2ATSConfig(offload=True)
    check_settings(args(), on)  # the radix cache included: prefixes are staged from the host pool
    check_settings(args(disable_radix_cache=True), on)
    check_settings(args(radix_cache_backend="a2ats-offload"), on)
    check_settings(args(disable_radix_cache=True, radix_cache_backend="flexkv"), on)  # no tree: any name
    with pytest.raises(Unsupported, match="--radix-cache-backend a2ats-offload .*, not flexkv"):
        check_settings(args(radix_cache_backend="flexkv"), on)
    check_settings(args(enable_mixed_chunk=True, page_size=16), A2ATSConfig())  # not offloading: anything goes
    with pytest.raises(Unsupported, match=r"needs no --enable-mixed-chunk .*; --page-size 1; no --enable-hier"):
        check_settings(args(enable_mixed_chunk=True, page_size=16, enable_hierarchical_cache=True), on)


def test_staging_holds_one_whole_prompt_and_one_prefill_batch() -> None:
    assert staging_tokens(32768, 8192, 16384) == 32768 + 16384
    assert staging_tokens(32768, -1, 4096) == 32768 + 4096  # chunked prefill off


def test_request_rows_are_capped_at_the_hot_buffers() -> None:
    from a2ats_sglang.patches.max_running import cap

    try:
        set_plan(None)
        assert cap(lambda kvc, n: 4096, None, 10**6) == 4096, "without offload SGLang's number stands"
        set_plan(OffloadPlan(logical_slots=10**6, max_running=37, hot_tokens=1000, staging_tokens=5000))
        assert cap(lambda kvc, n: 4096, None, 10**6) == 37
        assert cap(lambda kvc, n: 12, None, 500) == 12, "a tiny host pool may allow fewer rows than buffers"
    finally:
        set_plan(None)
