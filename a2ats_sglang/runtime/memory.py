"""Every GPU byte the ``a2ats`` backend adds, computed before SGLang sizes its KV pool.

SGLang turns free memory into KV slots (``available_bytes // cell_size``); the backend adds a
code per slot (int16 per layer and kv head), the codebook tensors (encode projection fp32,
half norms fp32, decoded codewords bf16) and the decode graph's score/index buffers. The
``pool_sizing`` patch charges them there, so ``--mem-fraction-static`` keeps its meaning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from a2ats_sglang.method.codebook import META_FILE
from a2ats_sglang.runtime.config import A2ATSConfig
from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers

CODE_BYTES = 2  # int16 per (slot, layer, kv head)


@dataclass(frozen=True)
class Footprint:
    per_token: int  # bytes per KV slot
    fixed: int  # bytes independent of the pool size


def codebook_size(cfg: A2ATSConfig) -> int:
    if cfg.codebook is None:
        return 4096
    return int(json.loads((Path(cfg.codebook) / META_FILE).read_text())["codebook_size"])


def footprint(
    cfg: A2ATSConfig, num_layers: int, num_kv_heads: int, head_dim: int, context_len: int,
    graph_max_bs: int, size: int | None = None,
) -> Footprint:
    size = codebook_size(cfg) if size is None else size
    budget = Budget(cfg.sinks or 0, cfg.window or 64, cfg.budget_ratio, cfg.budget_min, cfg.budget_max)
    # window/sinks only shift the static width by a few tokens; 64 + 8 covers the defaults
    width = budget.width(context_len) + 8
    per_pair = size * (head_dim * 4 + 4 + head_dim * 2)
    scratch = SparseDecodeBuffers.nbytes(graph_max_bs, num_kv_heads, context_len, width, size) if graph_max_bs else 0
    return Footprint(num_layers * num_kv_heads * CODE_BYTES, num_layers * num_kv_heads * per_pair + scratch)


@dataclass(frozen=True)
class OffloadFootprint:
    """GPU bytes of offload mode, by what they scale with."""

    per_context_token: int  # codes: every logical slot of every request keeps them on the GPU
    per_running_request: int  # its hot buffer (H slots of K/V, all layers) and the tables naming them
    stock_per_context_token: int  # what a GPU-resident KV cache spends instead


def offload_footprint(num_layers: int, num_kv_heads: int, head_dim: int, hot_tokens: int, kv_dtype_bytes: int = 2) -> OffloadFootprint:
    """Codes per context token; per running request a hot buffer of ``hot_tokens`` slots (each
    kv head keeps its own tokens in its column of the slots) plus the per-(layer, kv head) table
    of the token each slot holds (int32) and its clock hand."""
    kv_per_token = 2 * num_layers * num_kv_heads * head_dim * kv_dtype_bytes
    tables = num_layers * num_kv_heads * (hot_tokens * 4 + 4) + hot_tokens * 4  # tokens, hand, slot ids
    return OffloadFootprint(num_layers * num_kv_heads * CODE_BYTES, hot_tokens * kv_per_token + tables, kv_per_token)
