"""Offload mode's observability: hot-buffer hit rate, bytes fetched from host memory per decode
step, host pool and staging usage; logged periodically and, with ``--enable-metrics``, exported
as Prometheus metrics next to SGLang's (``a2ats:*``).

The counters live on the GPU (the fetch kernel adds to them inside the decode graph): hits,
misses and, last, copies from host memory, which the bytes fetched count. Hot buffers copy each
miss (two counters, the last is both); the shared cache copies a key that several requests miss
in one step once (three).
Reading them never waits for the device: a snapshot is copied to pinned memory behind a CUDA
event, and read on a later step once the event has completed. With GPU homes the snapshot also
takes the allocator's count of free homes (a device sum), so the tokens in use are split by tier.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

logger = logging.getLogger(__name__)


class OffloadMetrics:
    def __init__(self, counters: torch.Tensor, bytes_per_copy: int, host_used: Callable[[], int], host_total: int,
                 staging_used: Callable[[], int], prometheus: bool, log_every_s: float = 30.0,
                 sample_every_s: float = 2.0, homes_total: int = 0,
                 homes_free: Callable[[], torch.Tensor] | None = None) -> None:
        """``host_used``: logical slots in use (both tiers with GPU homes); ``host_total`` the
        logical slots in all; ``homes_free`` a device count of free GPU homes, of ``homes_total``."""
        self.counters, self.bytes_per_copy = counters, bytes_per_copy
        self.host_used, self.host_total, self.staging_used = host_used, host_total, staging_used
        self.homes_total, self.homes_free = homes_total, homes_free
        self.homes_used = 0  # at the last read
        self.log_every_s, self.sample_every_s = log_every_s, sample_every_s
        pin = counters.is_cuda
        self.snapshot = torch.zeros(counters.shape[0] + (homes_free is not None), dtype=torch.int64, pin_memory=pin)
        self.event = torch.cuda.Event() if pin else None
        self.pending = False
        self.steps = 0  # decode steps since start (host count)
        self.snap_steps = 0
        self.last = (0, 0, 0, 0)  # hits, misses, copies, steps at the last read
        self.last_log = self.last_sample = time.monotonic()
        self.window = (0, 0, 0, 0)  # since the last log
        self.gauges = self._prometheus() if prometheus else None

    @staticmethod
    def _prometheus() -> dict:
        from prometheus_client import Counter, Gauge

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, multiprocess_mode="mostrecent")

        return {
            "hits": Counter("a2ats:hot_hits", "Picked tokens found in the hot buffer (per layer and kv head)"),
            "misses": Counter("a2ats:hot_misses", "Picked tokens not found in GPU memory (per layer and kv head)"),
            "bytes": Counter("a2ats:fetched_bytes", "Bytes of K/V read from host memory by decode steps"),
            "steps": Counter("a2ats:decode_steps", "Decode steps run in offload mode"),
            "hit_rate": gauge("a2ats:hot_hit_rate", "Hot-buffer hit rate over the last sample"),
            "bytes_per_step": gauge("a2ats:fetched_bytes_per_step", "Host→GPU K/V bytes per decode step, last sample"),
            "host_used": gauge("a2ats:host_pool_used_tokens", "Host KV pool rows in use"),
            "host_total": gauge("a2ats:host_pool_total_tokens", "Host KV pool rows in all"),
            "homes_used": gauge("a2ats:gpu_homes_used_tokens", "GPU homes (KV read in place) in use"),
            "homes_total": gauge("a2ats:gpu_homes_total_tokens", "GPU homes in all"),
            "staging_used": gauge("a2ats:staging_used_tokens", "Prefill staging slots on the GPU in use"),
        }

    def step(self) -> None:
        """Called on the host once per decode step (outside the graph)."""
        self.steps += 1
        now = time.monotonic()
        if self.pending and self.event is not None and self.event.query():
            self.pending = False
            self._read(now)
        if not self.pending and now - self.last_sample >= self.sample_every_s:
            self.last_sample = now
            n = self.counters.shape[0]
            self.snapshot[:n].copy_(self.counters, non_blocking=True)
            if self.homes_free is not None:
                self.snapshot[n:].copy_(self.homes_free().reshape(1), non_blocking=True)
            self.snap_steps = self.steps
            if self.event is not None:
                self.event.record()
                self.pending = True
            else:
                self._read(now)

    def _read(self, now: float) -> None:
        values = [int(x) for x in self.snapshot.tolist()]
        if self.homes_free is not None:
            self.homes_used = self.homes_total - values.pop()
        now_totals = (values[0], values[1], values[-1], self.snap_steps)
        dh, dm, dc, ds = (a - b for a, b in zip(now_totals, self.last))
        self.last = now_totals
        self.window = tuple(w + d for w, d in zip(self.window, (dh, dm, dc, ds)))
        if self.gauges is not None:
            g = self.gauges
            g["hits"].inc(dh)
            g["misses"].inc(dm)
            g["bytes"].inc(dc * self.bytes_per_copy)
            g["steps"].inc(ds)
            if dh + dm:
                g["hit_rate"].set(dh / (dh + dm))
            if ds:
                g["bytes_per_step"].set(dc * self.bytes_per_copy / ds)
            g["host_used"].set(self.host_used() - self.homes_used)
            g["host_total"].set(self.host_total - self.homes_total)
            g["homes_used"].set(self.homes_used)
            g["homes_total"].set(self.homes_total)
            g["staging_used"].set(self.staging_used())
        if now - self.last_log >= self.log_every_s and self.window[3]:
            h, m, c, s = self.window
            homes = f"GPU homes {self.homes_used}/{self.homes_total} tokens, " if self.homes_total else ""
            logger.info(
                "A²ATS offload: hot-buffer hit rate %.1f%%, %.2f MiB fetched per decode step (%d steps), %shost pool "
                "%d/%d tokens, staging %d tokens", 100 * h / max(h + m, 1), c * self.bytes_per_copy / s / 2**20, s,
                homes, self.host_used() - self.homes_used, self.host_total - self.homes_total, self.staging_used(),
            )
            self.window, self.last_log = (0, 0, 0, 0), now
