"""Offload mode's hot buffers: which GPU slots each running request owns, and what they hold.

SGLang's request pool has a fixed number of rows (``max_running_requests``); row ``r`` owns the
GPU slots ``[base + r·H, base + (r + 1)·H)`` of every layer's KV tensor, so no allocation happens
at admission or in the decode step. Per layer, each (request, kv head) keeps its own ``H``
tokens in its column of those slots (:func:`~a2ats_sglang.kernels.hot_buffer.fetch_hot`). A
request that takes over a pool row starts with nothing resident (:meth:`HotBuffers.reset`).
"""

from __future__ import annotations

import torch

from a2ats_sglang.kernels.hot_buffer import fetch_hot


class HotBuffers:
    def __init__(self, num_layers: int, max_reqs: int, num_kv_heads: int, hot_tokens: int, base_slot: int,
                 device: torch.device | str) -> None:
        self.size, self.num_kv_heads = hot_tokens, num_kv_heads
        self.base_slot, self.num_slots = base_slot, max_reqs * hot_tokens
        ids = torch.arange(base_slot, base_slot + self.num_slots, dtype=torch.int32, device=device)
        self.slots = ids.view(max_reqs, hot_tokens)  # [R, H] GPU slots of each request row
        self.tokens = torch.full((num_layers, max_reqs, num_kv_heads, hot_tokens), -1, dtype=torch.int32, device=device)
        self.hand = torch.zeros(num_layers, max_reqs, num_kv_heads, dtype=torch.int32, device=device)
        self.counters = torch.zeros(2, dtype=torch.int64, device=device)  # hits, misses since start

    def reset(self, req_pool_indices: torch.Tensor) -> None:
        """These pool rows start new requests: nothing of theirs is resident in any layer."""
        rows = req_pool_indices.long()
        self.tokens[:, rows] = -1
        self.hand[:, rows] = 0

    def begin_step(self) -> None:
        """Nothing to do: each request row's buffer is its own (see :class:`SharedCache`)."""

    def invalidate(self, layer: int, loc: torch.Tensor) -> None:
        """Nothing to do: a buffer holds tokens by position in its request, and a running
        request's slots are not rewritten; a row changing hands is :meth:`reset`."""

    def fetch(
        self, layer: int, picks: torch.Tensor, counts: torch.Tensor, scores: torch.Tensor,
        req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
        host_k: torch.Tensor, host_v: torch.Tensor, dev_k: torch.Tensor, dev_v: torch.Tensor,
        indptr: torch.Tensor, out_indices: torch.Tensor, victims: torch.Tensor, stats: torch.Tensor,
    ) -> None:
        """One layer's fetch for the step's rows; the kernel adds its hits and misses to :attr:`counters`."""
        if picks.shape[1] > self.size:  # a row could then pick more tokens than its buffer holds
            raise ValueError(f"hot buffers of {self.size} tokens cannot hold a top-K {picks.shape[1]} wide")
        rows = req_pool_indices.shape[0] * self.num_kv_heads
        fetch_hot(picks, counts, scores, req_to_token, req_pool_indices, seq_lens, self.slots, self.tokens[layer],
                  self.hand[layer], victims, host_k, host_v, dev_k, dev_v, indptr, out_indices, stats, rows,
                  counters=self.counters)
