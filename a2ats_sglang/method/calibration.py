"""From captured post-RoPE queries and keys to a :class:`Codebook`.

:class:`CalibrationSet` is fed one layer's tokens at a time (post-RoPE, with positions). It
keeps the pre-RoPE keys of every (layer, kv_head) and the second moment of the WRoPE queries
pooled over each GQA group — queries themselves are never stored, which keeps an 8B model's
calibration within one GPU. :func:`fit_codebook` then runs k-means on whitened keys for all
pairs, in groups sized to a memory budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from a2ats_sglang.method.codebook import Codebook, CodebookMeta, ModelIdentity
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.vq import (
    Whitening,
    identity_whitening,
    kmeans,
    whitening_from_moment,
)


class CalibrationSet:
    """Pre-RoPE keys and pooled WRoPE-query moments for every (layer, kv_head)."""

    def __init__(
        self,
        model: ModelIdentity,
        b: int,
        device: torch.device | str = "cpu",
        h_distances: Sequence[int] | None = None,
    ) -> None:
        """``h_distances``: WRoPE distances whose rotated queries are pooled into H
        (default ``[b]``, the paper's choice)."""
        self.model = model
        self.rope = RopeSpec.from_dict(model.rope)
        self.b = b
        self.h_distances = list(h_distances or [b])
        self.device = torch.device(device)
        layers, heads, d = model.num_layers, model.num_kv_heads, model.head_dim
        self.moment = torch.zeros(layers, heads, d, d, dtype=torch.float64, device=self.device)
        self.query_count = torch.zeros(layers, dtype=torch.long)
        self._keys: list[list[torch.Tensor]] = [[] for _ in range(layers)]

    def add(self, layer: int, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> None:
        """Add one layer's tokens: ``q`` ``[n, Hq, d]`` and ``k`` ``[n, Hkv, d]``, post-RoPE."""
        m = self.model
        pos = positions.to(q.device)
        for distance in self.h_distances:
            q_w = self.rope.wrope_query(q.float(), pos, distance)  # [n, Hq, d]
            grouped = q_w.view(q.shape[0], m.num_kv_heads, m.group_size, m.head_dim)
            grouped = grouped.permute(1, 0, 2, 3).reshape(m.num_kv_heads, -1, m.head_dim)
            self.moment[layer] += torch.bmm(grouped.transpose(1, 2), grouped).to(self.device, torch.float64)
        self.query_count[layer] += q.shape[0]
        k_pre = self.rope.unrotate(k.float(), pos)  # [n, Hkv, d]
        self._keys[layer].append(k_pre.transpose(0, 1).to(self.device))

    @property
    def num_tokens(self) -> int:
        return sum(t.shape[1] for t in self._keys[0])

    def keys(self, layer: int) -> torch.Tensor:
        """All pre-RoPE keys of a layer. # [Hkv, n, d] float32"""
        if len(self._keys[layer]) > 1:
            self._keys[layer] = [torch.cat(self._keys[layer], dim=1)]
        return self._keys[layer][0]

    def whitening(self, kind: str) -> Whitening:
        """Per-pair whitening, flattened over (layer, kv_head). # [pairs, d, d]"""
        m = self.model
        pairs = m.num_layers * m.num_kv_heads
        if kind == "kmeans":
            return identity_whitening(pairs, m.head_dim, self.device)
        if bool((self.query_count == 0).any()):
            raise ValueError("some layers saw no queries; was every layer captured?")
        return whitening_from_moment(self.moment.view(pairs, m.head_dim, m.head_dim))


def fit_codebook(
    data: CalibrationSet,
    size: int,
    kind: str = "query_aware",
    max_iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    memory_budget: int = 2 << 30,
    window: int = 64,
    sinks: int = 8,
    calibration_summary: dict | None = None,
    progress: Callable[[int, int, int, float], None] | None = None,
) -> Codebook:
    """k-means (query-aware when ``kind="query_aware"``) for every (layer, kv_head).

    Pairs are processed in groups whose keys and k-means temporaries fit in ``memory_budget``
    bytes; results are deterministic for a given seed and budget.
    ``progress(done_pairs, total_pairs, iteration, shift)``.
    """
    m = data.model
    n = data.num_tokens
    if n < size:
        raise ValueError(f"calibration collected {n} keys per head, fewer than codebook size {size}")
    whitening = data.whitening(kind)
    pairs = m.num_layers * m.num_kv_heads
    # a group holds its keys and their whitened copy; kmeans chunks its own temporaries
    per_group = max(1, min(pairs, memory_budget // (4 * n * m.head_dim * 4)))
    centroids = torch.empty(pairs, size, m.head_dim, device=data.device)
    iterations = []
    for start in range(0, pairs, per_group):
        stop = min(pairs, start + per_group)
        keys = torch.stack(
            [data.keys(p // m.num_kv_heads)[p % m.num_kv_heads] for p in range(start, stop)]
        )  # [g, n, d]
        z = torch.bmm(keys, whitening.chol[start:stop])
        del keys

        def report(it: int, shift: float, start: int = start) -> None:
            if progress is not None:
                progress(start, pairs, it, shift)

        result = kmeans(z, size, max_iters, tol, seed + start, memory_budget // 2, report)
        centroids[start:stop] = result.centroids
        iterations.append(result.iterations)
        if progress is not None:
            progress(stop, pairs, result.iterations, 0.0)
    shape = (m.num_layers, m.num_kv_heads)
    meta = CodebookMeta(
        model=m, codebook_size=size, kind=kind, window=window, b=data.b, sinks=sinks,
        calibration={**(calibration_summary or {}), "keys_per_head": n, "h_distances": data.h_distances, "max_iters": max_iters,
                     "iterations": max(iterations), "seed": seed},
    )
    return Codebook(
        meta,
        centroids.view(*shape, size, m.head_dim).cpu(),
        whitening.chol.view(*shape, m.head_dim, m.head_dim).cpu(),
        whitening.chol_inv.view(*shape, m.head_dim, m.head_dim).cpu(),
    )
