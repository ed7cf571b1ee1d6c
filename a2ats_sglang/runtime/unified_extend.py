"""Deterministic extends whose rows do not depend on where the prompt was split.

With the radix cache on, one prompt reaches attention either whole (a cold prefill, cut into
chunks of a fixed size) or as a short continuation of a cached prefix. FlashInfer's prefill
picks its query tile, and with it the KV tile its online softmax steps over, from the number of
query rows in the batch, so a continuation of at most 64 packed rows (new tokens × query heads
per KV head) rounds differently from the same rows in a cold prefill, and greedy answers can
change. SGLang's unified Triton extend kernel (its Triton backend's deterministic path) reads
prefix and new keys through one index list, from position 0 in tiles fixed by the head size:
each row's result depends on its own keys only. Deterministic mode runs our extends through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sglang.kernels.ops.attention.extend_attention import extend_attention_fwd_unified
from sglang.kernels.ops.kvcache.kv_indices import create_flashinfer_kv_indices_triton


@dataclass
class UnifiedExtend:
    """One extend's index lists: query rows by request, and every key of each request (its
    cached or earlier-chunk prefix and its new tokens) as slots of the KV tensors."""

    qo_indptr: torch.Tensor  # [bs + 1] int32
    kv_indptr: torch.Tensor  # [bs + 1] int32
    kv_indices: torch.Tensor  # [sum(seq_lens)] int64: slots, positions 0.. of each request
    prefix_lens: torch.Tensor  # [bs] int32
    max_extend: int

    @classmethod
    def plan(cls, table: torch.Tensor, rows: torch.Tensor, seq_lens: torch.Tensor, prefix_lens: torch.Tensor,
             extend_lens: torch.Tensor, seq_lens_sum: int, max_extend: int) -> UnifiedExtend:
        """``table[rows[i], :seq_lens[i]]`` are request ``i``'s slots (``req_to_token``, or the
        staging table in offload mode); its last ``extend_lens[i]`` positions are new."""
        bs = rows.shape[0]
        device = rows.device
        zero = torch.zeros(1, dtype=torch.int32, device=device)
        qo_indptr = torch.cat([zero, torch.cumsum(extend_lens[:bs], 0, dtype=torch.int32)])
        kv_indptr = torch.cat([zero, torch.cumsum(seq_lens[:bs], 0, dtype=torch.int32)])
        kv_indices = torch.empty(seq_lens_sum, dtype=torch.int64, device=device)
        create_flashinfer_kv_indices_triton[(bs,)](table, rows, seq_lens, kv_indptr, None, kv_indices, table.stride(0))
        return cls(qo_indptr, kv_indptr, kv_indices, prefix_lens[:bs].to(torch.int32), max_extend)

    def attend(self, q: torch.Tensor, k_buffer: torch.Tensor, v_buffer: torch.Tensor, sm_scale: float,
               logit_cap: float = 0.0, k_scale: float | None = None, v_scale: float | None = None) -> torch.Tensor:
        """Causal attention of ``q [tokens, heads, head_dim]`` over each request's keys."""
        o = torch.empty(q.shape[:-1] + (v_buffer.shape[-1],), dtype=q.dtype, device=q.device)
        extend_attention_fwd_unified(
            q, o, k_buffer, v_buffer, 1.0 if k_scale is None else k_scale, 1.0 if v_scale is None else v_scale,
            self.qo_indptr, self.kv_indptr, self.kv_indices, self.prefix_lens, self.max_extend,
            sm_scale=sm_scale, logit_cap=logit_cap,
        )
        return o
