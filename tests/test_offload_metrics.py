"""Offload metrics: deltas of the GPU counters per sample, bytes per decode step, the periodic log."""

from __future__ import annotations

import logging

import pytest
import torch

from a2ats_sglang.runtime.tiered.metrics import OffloadMetrics


def test_samples_turn_counters_into_rates_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    counters = torch.zeros(2, dtype=torch.int64)
    used = {"host": 100, "staging": 7}
    m = OffloadMetrics(counters, bytes_per_copy=256, host_used=lambda: used["host"], host_total=1000,
                       staging_used=lambda: used["staging"], prometheus=False, log_every_s=0.0, sample_every_s=0.0)
    with caplog.at_level(logging.INFO, logger="a2ats_sglang.runtime.tiered.metrics"):
        for hits, misses in ((30, 90), (90, 30)):  # a decode step's fetches, then the step's host call
            counters += torch.tensor([hits, misses])
            m.step()
    assert m.last == (120, 120, 120, 2), "every sample reads the running totals (hot buffers copy every miss)"
    lines = [r.getMessage() for r in caplog.records]
    assert "hit rate 75.0%" in lines[-1] and "host pool 100/1000 tokens, staging 7 tokens" in lines[-1]
    assert "hit rate 25.0%" in lines[0], "each log line covers only the steps since the last"
    assert f"{30 * 256 / 2**20:.2f} MiB fetched per decode step (1 steps)" in lines[-1]


def test_with_a_third_counter_bytes_follow_the_copies_and_the_hit_rate_the_misses(caplog: pytest.LogCaptureFixture) -> None:
    """The shared cache copies a key several requests miss in one step once: 100 hits, 300
    misses, 10 copies is a 25 % hit rate and 10 copies' bytes, not 91 % and 300."""
    counters = torch.zeros(3, dtype=torch.int64)
    m = OffloadMetrics(counters, bytes_per_copy=256, host_used=lambda: 0, host_total=1000,
                       staging_used=lambda: 0, prometheus=False, log_every_s=0.0, sample_every_s=0.0)
    with caplog.at_level(logging.INFO, logger="a2ats_sglang.runtime.tiered.metrics"):
        counters += torch.tensor([100, 300, 10])
        m.step()
    assert m.last == (100, 300, 10, 1)
    line = caplog.records[-1].getMessage()
    assert "hit rate 25.0%" in line and f"{10 * 256 / 2**20:.2f} MiB fetched per decode step (1 steps)" in line


def test_with_gpu_homes_the_tokens_in_use_are_split_by_tier(caplog: pytest.LogCaptureFixture) -> None:
    """The allocator's count of free homes rides in the snapshot, freed slots not yet merged
    into its free list included: 110 logical slots in use are 100 GPU homes and 10 host rows."""
    from a2ats_sglang.runtime.tiered.allocator import TieredAllocator

    allocator = TieredAllocator(1000, 100, torch.bfloat16, "cpu", kvcache=None)
    allocator.alloc(100)
    allocator.free(torch.arange(41, 101))  # 60 homes back
    allocator.alloc(90)  # those 60 homes first, then host rows 101…130
    counters = torch.zeros(3, dtype=torch.int64)
    m = OffloadMetrics(counters, 256, host_used=lambda: 1000 - allocator.available_size(), host_total=1000,
                       staging_used=lambda: 0, prometheus=False, log_every_s=0.0, sample_every_s=0.0,
                       homes_total=100, homes_free=allocator.gpu_free)
    allocator.free(torch.arange(111, 131))  # 20 host rows back, in the release list
    with caplog.at_level(logging.INFO, logger="a2ats_sglang.runtime.tiered.metrics"):
        m.step()
        assert m.homes_used == 100 and allocator.available_size() == 890
        assert "GPU homes 100/100 tokens, host pool 10/900 tokens" in caplog.records[-1].getMessage()
        allocator.free(torch.arange(1, 31))  # 30 homes back
        m.step()
    assert "GPU homes 70/100 tokens, host pool 10/900 tokens" in caplog.records[-1].getMessage()
