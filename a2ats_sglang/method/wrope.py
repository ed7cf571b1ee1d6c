"""Windowed-RoPE scoring of far tokens: one distance ``b`` (the paper) or distance buckets.

The paper scores every far token as if it sat exactly ``b`` positions behind the query. With
:class:`DistanceBuckets` the far distances are split into ranges, the query is rotated once per
range by a representative distance, and each token is scored with the rotation of the range
its distance falls in. Keys stay pre-RoPE and position-free either way (one codebook serves
every position); only the query side and the lookup table grow, one row set per bucket. A
bucket is a contiguous range of positions, so a kernel can walk buckets one table at a time.

``DistanceBuckets.single(window, b)`` is the paper's WRoPE; ``DistanceBuckets.log2(window,
context)`` doubles the bucket width from the window up to the context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.scores import exact_logits, lookup_table


@dataclass(frozen=True)
class DistanceBuckets:
    """Bucket ``k`` covers distances ``[edges[k], edges[k+1])``; the last one is open-ended."""

    edges: tuple[int, ...]
    representatives: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.edges or len(self.edges) != len(self.representatives):
            raise ValueError("need one representative distance per bucket edge")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])) or self.edges[0] < 0:
            raise ValueError(f"bucket edges must be non-negative and increasing, got {self.edges}")
        for k, rep in enumerate(self.representatives):
            hi = self.edges[k + 1] if k + 1 < len(self.edges) else math.inf
            if not self.edges[k] <= rep < hi:
                raise ValueError(f"representative {rep} lies outside its bucket [{self.edges[k]}, {hi})")

    @classmethod
    def single(cls, window: int, b: int) -> DistanceBuckets:
        """The paper's WRoPE: every far token (distance ≥ window) scored at distance ``b``."""
        return cls((window,), (b,))

    @classmethod
    def log2(cls, window: int, context: int) -> DistanceBuckets:
        """``[w, 2w), [2w, 4w), …`` up to ``context``, each represented by its geometric middle."""
        edges = [window]
        while edges[-1] * 2 < context:
            edges.append(edges[-1] * 2)
        reps = [round(math.sqrt(lo * 2 * lo)) for lo in edges]  # [lo, 2·lo); the last too
        return cls(tuple(edges), tuple(reps))

    def index(self, distance: torch.Tensor) -> torch.Tensor:
        """Bucket of each distance; distances below the first edge (window, future) map to 0."""
        edges = torch.tensor(self.edges, device=distance.device, dtype=distance.dtype)
        return (torch.searchsorted(edges, distance, right=True) - 1).clamp_min(0)

    def queries(self, q_post: torch.Tensor, pos: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
        """WRoPE query per bucket. ``q_post`` ``[B, Hq, d]`` at ``pos`` ``[B]`` → ``[B, buckets, Hq, d]``."""
        return torch.stack([rope.wrope_query(q_post.float(), pos, r) for r in self.representatives], dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "representatives": list(self.representatives)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistanceBuckets:
        return cls(tuple(data["edges"]), tuple(data["representatives"]))


def _token_buckets(buckets: DistanceBuckets, pos: torch.Tensor, seq_len: int, start: int) -> torch.Tensor:
    """Bucket of every (query, token) pair; token ``j`` sits at position ``start + j``. # [B, S] int64"""
    distance = pos[:, None] - (start + torch.arange(seq_len, device=pos.device))[None, :]
    return buckets.index(distance)


def wrope_logits(
    q_post: torch.Tensor, pos: torch.Tensor, k_pre: torch.Tensor, rope: RopeSpec, buckets: DistanceBuckets,
    scale: float, start: int = 0,
) -> torch.Tensor:
    """WRoPE logits against exact pre-RoPE keys ``[S, Hkv, d]`` (a codebook's ceiling). # [B, Hq, S]

    Queries sit at absolute positions ``pos``, key ``j`` at ``start + j``.
    """
    q = buckets.queries(q_post, pos, rope)  # [B, nb, Hq, d]
    batch, nb, heads, dim = q.shape
    seq_len = k_pre.shape[0]
    every = exact_logits(q.reshape(batch * nb, heads, dim), k_pre, scale).view(batch, nb, heads, seq_len)
    which = _token_buckets(buckets, pos, seq_len, start)[:, None, None, :].expand(batch, 1, heads, seq_len)
    return torch.gather(every, 1, which).squeeze(1)


def wrope_code_logits(
    q_post: torch.Tensor, pos: torch.Tensor, codes: torch.Tensor, decoded: torch.Tensor,
    rope: RopeSpec, buckets: DistanceBuckets, scale: float, start: int = 0,
) -> torch.Tensor:
    """A²ATS approximate logits: each token's code looked up in its bucket's table. # [B, Hq, S]

    ``codes`` ``[S, Hkv]``; ``decoded`` ``[Hkv, size, d]`` codewords in key space; positions as
    in :func:`wrope_logits`.
    """
    q = buckets.queries(q_post, pos, rope)  # [B, nb, Hq, d]
    batch, nb, heads, dim = q.shape
    size, seq_len = decoded.shape[1], codes.shape[0]
    table = lookup_table(q.reshape(batch * nb, heads, dim), decoded, scale).view(batch, nb, heads, size)
    flat = table.permute(0, 2, 1, 3).reshape(batch, heads, nb * size)  # bucket-major rows per head
    group = heads // codes.shape[1]
    code_h = codes.long().t().repeat_interleave(group, dim=0)  # [Hq, S]
    index = _token_buckets(buckets, pos, seq_len, start)[:, None, :] * size + code_h[None]  # [B, Hq, S]
    return torch.gather(flat, 2, index)
