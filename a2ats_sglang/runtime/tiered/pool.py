"""Offload mode's KV pool: SGLang's MHA pool whose ``loc`` is a logical slot.

SGLang's allocator, ``req_to_token`` and the radix tree count logical slots, as many as the
host pool holds. Every K/V write goes through to the host pool
(:func:`~a2ats_sglang.kernels.hot_buffer.store_to_host`); the GPU tensors (this pool's own
``k_buffer``/``v_buffer``, far fewer slots) are written only for an extend, at the prefill
staging slots of its tokens, because dense prefill reads them there. Decode tokens reach the GPU
through the hot-buffer fetch when a step selects them.

An extend's host writes (~1 GiB per 8K-token chunk of Llama-8B, ~45 ms over PCIe) run on a side
stream from the staged copy, overlapped with the layers after them (so do cached-prefix copies
into staging, :meth:`OffloadKVPool.on_side`); :meth:`OffloadKVPool.join` makes the forward
stream wait for them (a GPU-side wait) before the next batch, which may read the host pool
(decode) or reuse released staging slots (extend). Decode writes, a few tokens, stay on the
forward stream, inside the decode graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from sglang.srt.mem_cache.memory_pool import KVWriteLoc, MHATokenToKVPool, unwrap_write_loc

from a2ats_sglang.kernels.hot_buffer import store_to_host
from a2ats_sglang.runtime.tiered.host_pool import HostKVPool
from a2ats_sglang.runtime.tiered.staging import Staging


class OffloadKVPool(MHATokenToKVPool):
    def __init__(self, host: HostKVPool, staging: Staging, gpu_slots: int, homes: int = 0, **mha_kwargs) -> None:
        """``homes``: logical slots ``1 … homes`` live in rows of this pool's GPU tensors (row =
        slot), slot ``s`` above in host row ``s − homes``."""
        super().__init__(gpu_slots, **mha_kwargs)
        if self.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"offload mode keeps K/V in bf16/fp16, not {self.dtype}: use --kv-cache-dtype auto")
        self.host, self.staging, self.homes = host, staging, homes
        self.logical_slots = homes + host.slots  # slot 0 included
        self.stage_writes = False  # the backend sets it for the duration of an extend
        self.side = torch.cuda.Stream(self.device) if torch.device(self.device).type == "cuda" else None
        self.side_done: torch.cuda.Event | None = None  # the last side-stream work enqueued
        self.in_flight: list[torch.Tensor] = []  # index tensors the side stream still reads
        # (layer, logical slots) → None, called for every write: the shared cache drops its copies
        self.on_write: Callable[[int, torch.Tensor], None] | None = None

    @property
    def layer_ids(self) -> range:
        """The model layers this pool holds (SGLang's ``end_layer`` is exclusive in a server,
        inclusive by default: the host pool's own count decides)."""
        return range(self.start_layer, self.start_layer + self.host.num_layers)

    def host_kv(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Host-pool K and V of model layer ``layer_id``."""
        return self.host.layer(layer_id - self.start_layer)

    def on_side(self, work: Callable[[], None]) -> torch.cuda.Event | None:
        """Run ``work`` on the side stream once the forward stream's work so far is done. →
        its completion event (None: it ran on the forward stream: no GPU, or a graph capture)"""
        if self.side is None or torch.cuda.is_current_stream_capturing():
            work()
            return None
        ready = torch.cuda.Event()
        ready.record()
        with torch.cuda.stream(self.side):
            self.side.wait_event(ready)
            work()
            self.side_done = torch.cuda.Event()
            self.side_done.record()
        return self.side_done

    def join(self) -> None:
        """The forward stream waits for the side stream's work (host writes, cached-prefix copies;
        no host synchronisation); their index tensors may then be freed."""
        if self.side_done is not None:
            torch.cuda.current_stream(self.side.device).wait_event(self.side_done)
            self.side_done = None
            self.in_flight.clear()

    def set_kv_buffer(self, layer, loc_info, cache_k: torch.Tensor, cache_v: torch.Tensor,
                      k_scale: float | None = None, v_scale: float | None = None,
                      layer_id_override: int | None = None, dcp_kv_mask: torch.Tensor | None = None) -> None:
        if dcp_kv_mask is not None:
            raise ValueError("offload mode does not support decode context parallelism")
        logical, _, _ = unwrap_write_loc(loc_info)
        layer_id = layer_id_override if layer_id_override is not None else layer.layer_id
        k = cache_k.view(-1, self.head_num, self.head_dim)
        v = cache_v.view(-1, self.head_num, self.v_head_dim)
        host_k, host_v = self.host_kv(layer_id)
        if self.on_write is not None:
            self.on_write(layer_id - self.start_layer, logical)
        homes = self.homes
        if not self.stage_writes:  # each token to its home: a GPU row or a host row
            store_to_host(k.to(self.dtype), v.to(self.dtype), logical, host_k, host_v, homes=homes,
                          home_kv=self.get_kv_buffer(layer_id) if homes else None)
            return
        gpu = self.staging.translate(logical)
        super().set_kv_buffer(layer, KVWriteLoc(gpu, None), cache_k, cache_v, k_scale, v_scale, layer_id_override)
        staged_k, staged_v = self.get_kv_buffer(layer_id)
        home_kv = (staged_k, staged_v) if homes else None  # staging and the GPU homes share the tensors
        if self.on_side(lambda: store_to_host(staged_k, staged_v, logical, host_k, host_v, rows=gpu, homes=homes,
                                              home_kv=home_kv)) is not None:
            self.in_flight += (gpu, logical)
