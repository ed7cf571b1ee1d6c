"""Offload mode's shared cache: host-homed K/V cached on the GPU for every request at once.

The alternative to :class:`~a2ats_sglang.runtime.tiered.hot_buffers.HotBuffers` (one buffer per
request row) behind ``--a2ats-offload-cache shared``: a pool of cells per layer keyed by
(logical slot, kv head), so requests that share a radix prefix share what is cached of it and
a request row owns nothing (:mod:`a2ats_sglang.kernels.shared_cache`). Same interface as
``HotBuffers`` for the decode step; besides, :meth:`begin_step` advances the step number inside
the decode graph and :meth:`invalidate` drops the keys of slots whose K/V is written anew.
"""

from __future__ import annotations

import torch

from a2ats_sglang.kernels.shared_cache import SENTINEL, fetch_shared, invalidate


def table_bytes_per_slot(num_layers: int, num_kv_heads: int) -> int:
    """GPU bytes of the ``cached`` table per logical slot (int32 per layer and kv head)."""
    return 4 * num_layers * num_kv_heads


def cell_table_bytes(num_layers: int) -> int:
    """GPU bytes per cell besides its K/V: ``owner`` and ``used`` in every layer."""
    return 8 * num_layers


class SharedCache:
    def __init__(self, num_layers: int, host_rows: int, num_kv_heads: int, cells: int, base_cell: int,
                 max_rows: int, width: int, device: torch.device | str, homes: int = 0,
                 step_picks: int | None = None) -> None:
        """Keys are host rows (logical slot − ``homes``): slots up to ``homes`` are GPU-homed and
        read in place, never cached. ``step_picks``: the most cells a step's picks may pin, what
        the scheduler's pick limit allows (default: every one of ``max_rows`` rows at ``width``)."""
        step_picks = max_rows * width if step_picks is None else step_picks
        if cells <= step_picks:
            raise ValueError(f"a shared cache of {cells} cells cannot hold a step's {step_picks} picks")
        self.num_kv_heads, self.cells, self.base_cell, self.homes = num_kv_heads, cells, base_cell, homes
        self.cached = torch.full((num_layers, host_rows * num_kv_heads + 1), -1, dtype=torch.int32, device=device)
        self.cached[:, -1] = SENTINEL
        self.owner = torch.full((num_layers, cells), -1, dtype=torch.int32, device=device)
        self.used = torch.full((num_layers, cells), -1, dtype=torch.int32, device=device)
        self.hand = torch.zeros(num_layers, 1, dtype=torch.int64, device=device)
        self.epoch = torch.zeros(1, dtype=torch.int32, device=device)
        self.scratch = torch.zeros(max_rows, 3 * width, dtype=torch.int32, device=device)
        self.counters = torch.zeros(3, dtype=torch.int64, device=device)  # hits, misses, copies from host since start

    def begin_step(self) -> None:
        """A new decode step: the cells the last one pinned may be taken again (in the graph)."""
        self.epoch.add_(1)

    def reset(self, req_pool_indices: torch.Tensor) -> None:
        """New requests own nothing here: what is cached stays, for them and for the others."""

    def invalidate(self, layer: int, loc: torch.Tensor) -> None:
        """Logical slots ``loc`` get new K/V in ``layer``: their cached copies are stale."""
        invalidate(self.cached[layer], loc, self.num_kv_heads, self.homes)

    def fetch(
        self, layer: int, picks: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor,
        req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
        host_k: torch.Tensor, host_v: torch.Tensor, dev_k: torch.Tensor, dev_v: torch.Tensor,
        indptr: torch.Tensor, out_indices: torch.Tensor, victims: torch.Tensor, stats: torch.Tensor,
    ) -> None:
        """One layer's fetch for the step's rows (``scores``, ``seq_lens`` and ``victims``, which
        the hot buffers need, are not used)."""
        rows = req_pool_indices.shape[0] * self.num_kv_heads
        fetch_shared(picks, counts, req_to_token, req_pool_indices, self.cached[layer], self.owner[layer],
                     self.used[layer], self.hand[layer], self.epoch, self.scratch, host_k, host_v, dev_k, dev_v,
                     self.base_cell, indptr, out_indices, stats, rows, counters=self.counters, homes=self.homes)
