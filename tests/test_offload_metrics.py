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
