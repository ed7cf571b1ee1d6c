"""Offload mode's :class:`~a2ats_sglang.runtime.kv_store.KVStore`: what an extend and a decode
step do when every token's K/V live in the pinned host pool.

- Extend: requests seen for the first time get empty hot buffers; staging slots of requests no
  longer prefilling are released; the new tokens get staging slots, and the prefill's attention
  indices are built from :attr:`Staging.table` (GPU slots by row and position) instead of
  ``req_to_token`` (logical slots). K/V writes go to the host pool and to staging. A new
  request whose prefix is cached (the radix cache) gets staging slots for it too, shared with
  the requests that match the same tree node; every layer's copy from the host pool is queued
  on the pool's side stream, and each layer's attention waits for its own.
- Decode: K/V writes go to the host pool only; keys due for encoding are read from the host
  pool; after the top-K, :func:`fetch_picks` makes the picks resident (hot buffers or the
  shared cache) and writes GPU-slot indices for the attention.

The host-side bookkeeping runs where SGLang prepares a step's metadata, outside CUDA graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from a2ats_sglang.kernels.hot_buffer import load_from_host
from a2ats_sglang.runtime.tiered.hot_buffers import HotBuffers
from a2ats_sglang.runtime.kv_store import KVStore
from a2ats_sglang.runtime.tiered.metrics import OffloadMetrics
from a2ats_sglang.runtime.tiered.pool import OffloadKVPool
from a2ats_sglang.runtime.server_state import describe
from a2ats_sglang.runtime.tiered.shared_cache import SharedCache
from a2ats_sglang.runtime.sparse_decode import SparseDecodeBuffers, SparseDecoder
from a2ats_sglang.runtime.tiered.staging import StagingFull


def prefix_slots(req_to_token: torch.Tensor, rows: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Logical slots of positions ``[0, lengths[i])`` of pool rows ``rows[i]``, concatenated."""
    counts = torch.tensor(lengths, dtype=torch.int64)
    n = int(counts.sum())
    positions = torch.arange(n) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    token_rows = torch.repeat_interleave(rows.long(), counts.to(rows.device, non_blocking=True), output_size=n)
    return req_to_token[token_rows, positions.to(rows.device, non_blocking=True)].long()


def fetch_picks(hot: HotBuffers | SharedCache, layer_id: int, buffers: SparseDecodeBuffers, req_to_token: torch.Tensor,
                req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, host_kv: tuple[torch.Tensor, torch.Tensor],
                dev_kv: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Make a layer's picks resident: the misses copied from the host pool ``host_kv`` into GPU
    slots of ``dev_kv`` (``[slots, Hkv, d]`` each), ``buffers.indices`` set to the GPU rows
    attention reads, this layer's hits and misses per row in ``buffers.stats``."""
    hot.fetch(
        layer_id, buffers.picks, buffers.counts, buffers.scores, req_to_token, req_pool_indices, seq_lens,
        *host_kv, *dev_kv, buffers.indptr, buffers.indices, buffers.victims, buffers.stats,
    )


class TieredStore(KVStore):
    fetches = True

    def __init__(self, pool: OffloadKVPool, num_layers: int, width: int, device: torch.device | str,
                 host_used: Callable[[], int] = lambda: 0, prometheus: bool = False,
                 homes_free: Callable[[], torch.Tensor] | None = None) -> None:
        super().__init__(pool)
        plan = pool.plan
        self.staging, self.plan = pool.staging, plan
        heads = pool.head_num
        if plan.shared:  # cells: one kv head of one token each, after staging in the [slots·Hkv, d] view
            # with a pick limit a step pins at most the admitted widths, a chunked prompt's and row 0's
            step_picks = (plan.pick_limit + 2 * width) * heads if plan.pick_limit else None
            self.hot: HotBuffers | SharedCache = SharedCache(
                num_layers, pool.host.slots, heads, plan.cache_slots * heads, plan.hot_base * heads,
                plan.hot_buffers * heads, width, device, homes=pool.homes, step_picks=step_picks)
            pool.on_write = self.hot.invalidate  # SGLang reuses freed slots: their cached K/V is stale
        else:
            assert not pool.homes, "GPU homes are read through the shared cache"
            if plan.hot_tokens < width:
                raise ValueError(f"hot buffers of {plan.hot_tokens} tokens cannot hold a decode step's {width} picks")
            self.hot = HotBuffers(num_layers, plan.hot_buffers, heads, plan.hot_tokens, plan.hot_base, device)
        per_copy = 2 * pool.head_dim * pool.dtype.itemsize  # K and V of one kv head in one layer
        self.metrics = OffloadMetrics(self.hot.counters, per_copy, host_used, plan.logical_slots,
                                      self.staging.in_use, prometheus, homes_total=pool.homes,
                                      homes_free=homes_free if pool.homes else None)
        # this extend's cached-prefix copies (host pool → staging) by layer: their completion events
        self.prefix_ready: dict[int, torch.cuda.Event | None] = {}

    def begin_extend(self, rids: list[str], req_pool_indices: torch.Tensor, prefix_lens: list[int],
                     extend_lens: list[int], out_cache_loc: torch.Tensor, req_to_token: torch.Tensor) -> None:
        """Host side of an extend (before its first layer runs)."""
        self.pool.join()  # the last extend's host writes read staging slots released below
        staging = self.staging
        held = set(staging.held())
        new = [i for i, rid in enumerate(rids) if rid not in held]
        device = req_pool_indices.device
        if new:
            self.hot.reset(req_pool_indices[torch.tensor(new, device=device)])
        # a new request's prefix is cached (a radix-cache hit): its K/V are in the host pool and
        # come back into staging, layer by layer (wait_prefix), for the dense prefill to read;
        # requests the scheduler saw share a prefix (same key) share its staging slots
        cached = [i for i in new if prefix_lens[i]]
        keys = [staging.prefix_keys.get(rids[i], ("request", rids[i])) for i in cached]
        staging.prefix_keys.clear()  # the scheduler records them for this extend only
        # prefixes staged already take their new users before the release below could free them
        for i, key in zip(cached, keys):
            if staging.is_staged(key):
                staging.share_prefix(rids[i], req_pool_indices[i : i + 1], key, prefix_lens[i])
        # a request prefilling over several chunks is in every extend until its last chunk, so a
        # held request missing here has finished its prefill (or was aborted)
        batch = set(rids)
        staging.release([rid for rid in held if rid not in batch])
        fresh = {k: prefix_lens[i] for i, k in zip(cached, keys) if not staging.is_staged(k)}
        need = sum(fresh.values()) + sum(extend_lens)
        if need > staging.available():
            raise StagingFull(f"prefill staging has {staging.available()} free slots; this extend needs {need}")
        firsts, gpus = [], []  # the first of the batch's requests sharing each fresh prefix
        for i, key in zip(cached, keys):
            if key in fresh:
                gpu = staging.share_prefix(rids[i], req_pool_indices[i : i + 1], key, prefix_lens[i])
                if gpu is not None:
                    firsts.append(i)
                    gpus.append(gpu)
        self.prefix_ready = {}
        if firsts:  # every layer's copy queued now, on the side stream: they overlap the layers' compute
            rows = req_pool_indices[torch.tensor(firsts, device=device)]
            logical = prefix_slots(req_to_token, rows, [prefix_lens[i] for i in firsts])
            gpu = torch.cat(gpus)
            pool = self.pool
            for layer_id in pool.layer_ids:
                host_k, host_v = pool.host_kv(layer_id)
                dev_k, dev_v = pool.get_kv_buffer(layer_id)
                self.prefix_ready[layer_id] = pool.on_side(
                    partial(load_from_host, host_k, host_v, logical, dev_k, dev_v, gpu, homes=pool.homes))
            if pool.side_done is not None:
                pool.in_flight += (logical, gpu)
        staging.place(rids, req_pool_indices, prefix_lens, extend_lens, out_cache_loc)
        self.pool.stage_writes = True

    def prefill_table(self, req_to_token: torch.Tensor) -> torch.Tensor:
        """Staging's table (GPU slots by row and position): the prefill's attention reads
        staging, not the logical slots of ``req_to_token``."""
        assert self.staging.table.shape[0] >= req_to_token.shape[0]
        return self.staging.table

    @property
    def homes(self) -> int:
        return self.pool.homes

    def keys(self, layer_id: int) -> torch.Tensor:
        """The GPU tensor with homes (slots above are :meth:`host_keys`), else the host pool."""
        return self.pool.get_key_buffer(layer_id) if self.pool.homes else self.pool.host_kv(layer_id)[0]

    def host_keys(self, layer_id: int) -> torch.Tensor | None:
        return self.pool.host_kv(layer_id)[0] if self.pool.homes else None

    def wait_layer(self, layer_id: int) -> None:
        """The forward stream waits for this layer's cached-prefix K/V to reach staging (before
        the layer's attention reads them)."""
        ready = self.prefix_ready.pop(layer_id, None)
        if ready is not None:
            torch.cuda.current_stream().wait_event(ready)

    def begin_decode(self, rids: list[str] | None, capture: bool = False) -> None:
        """Host side of a decode step: the batch's requests are past their prefill.

        ``rids`` is None on a CUDA-graph replay (SGLang's replay view carries no request ids):
        the decoding requests' staging is then released by the next extend instead."""
        self.pool.stage_writes = False
        if capture:
            return
        self.pool.join()  # the step reads the host pool the last extend wrote
        if rids and self.staging.held():  # only just after a prefill: skip the per-request loop otherwise
            self.staging.release(rids)
        self.metrics.step()

    def begin_step(self) -> None:
        self.hot.begin_step()  # the shared cache's step number (in the graph)

    def resolve(self, layer_id: int, buffers: SparseDecodeBuffers, req_to_token: torch.Tensor,
                req_pool_indices: torch.Tensor, seq_lens: torch.Tensor) -> None:
        fetch_picks(self.hot, layer_id, buffers, req_to_token, req_pool_indices, seq_lens,
                    self.pool.host_kv(layer_id), self.pool.get_kv_buffer(layer_id))

    def state(self, decoder: SparseDecoder, codebook_path: str, free_tokens: int) -> dict:
        m = self.metrics
        return describe(decoder, codebook_path, self.pool.logical_slots - 1, free_tokens, self.plan,
                        self.pool.host.nbytes, self.staging.in_use(), m.last, m.bytes_per_copy)
