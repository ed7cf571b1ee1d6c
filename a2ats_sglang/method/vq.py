"""Query-aware vector quantization of keys (A²ATS §3.3).

The score error of replacing key ``k`` by codeword ``c`` for query ``q`` is ``q·(k − c)``;
its expected square over the query distribution is ``(k − c) H (k − c)ᵀ`` with
``H = E[qᵀq]``. With ``H = L Lᵀ`` (Cholesky) that is ``‖kL − cL‖²``, so the codebook is plain
k-means on whitened keys ``z = kL``, mapped back with ``c = c' L⁻¹``. ``H = I`` is plain
k-means, the paper's ablation.

Everything here is batched over "pairs" — one (layer, kv_head) each — and runs on CPU or GPU.
Row-vector convention throughout: keys ``[pairs, n, d]``, ``z = k @ L``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

RIDGE = 1e-6  # added to the RMS-normalised H, as in the official code


class Whitening(NamedTuple):
    chol: torch.Tensor  # [pairs, d, d] lower-triangular L, H = L Lᵀ
    chol_inv: torch.Tensor  # [pairs, d, d] L⁻¹


def whitening_from_moment(moment: torch.Tensor, ridge: float = RIDGE) -> Whitening:
    """Cholesky factor of ``H / rms(H) + ridge·I`` for each pair.

    ``moment`` is ``Σ qᵀq`` over the pooled (GQA group) WRoPE queries, ``[pairs, d, d]``. The
    RMS normalisation fixes the ridge's relative size and does not change any argmin.
    """
    h = moment.double()
    h = 0.5 * (h + h.transpose(-1, -2))
    rms = h.square().mean(dim=(-1, -2), keepdim=True).sqrt().clamp_min(1e-30)
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    chol, info = torch.linalg.cholesky_ex(h / rms + ridge * eye)
    if bool((info != 0).any()):
        bad = torch.nonzero(info).flatten().tolist()
        raise ValueError(f"query second moment is not positive definite for pairs {bad}")
    chol_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    return Whitening(chol.float(), chol_inv.float())


def identity_whitening(pairs: int, dim: int, device: torch.device | str = "cpu") -> Whitening:
    """``H = I``: plain (query-unaware) k-means."""
    eye = torch.eye(dim, device=device).expand(pairs, dim, dim).contiguous()
    return Whitening(eye, eye.clone())


class KMeansResult(NamedTuple):
    centroids: torch.Tensor  # [pairs, k, d] float32, in the space k-means ran in
    iterations: int
    inertia: torch.Tensor  # [pairs] mean squared distance to the assigned centroid


def _nearest(
    x: torch.Tensor, centroids: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid. # [pairs, n] int64, float32"""
    c_sq = centroids.square().sum(-1)  # [pairs, k]
    idx, dist = [], []
    for start in range(0, x.shape[1], chunk):
        xs = x[:, start : start + chunk]
        # ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²; the argmin needs only the last two terms
        d = torch.baddbmm(c_sq[:, None, :], xs, centroids.transpose(1, 2), alpha=-2.0)
        best, arg = d.min(dim=-1)
        idx.append(arg)
        dist.append((best + xs.square().sum(-1)).clamp_min(0))
    return torch.cat(idx, 1), torch.cat(dist, 1)


def _kmeanspp_seed(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding, batched over pairs. # [pairs, k, d]"""
    pairs, n, dim = x.shape
    rows = torch.arange(pairs, device=x.device)
    x_sq = x.square().sum(-1)  # [pairs, n]
    first = torch.randint(n, (pairs,), generator=generator, device=generator.device)
    centroids = torch.empty(pairs, k, dim, dtype=x.dtype, device=x.device)
    centroids[:, 0] = x[rows, first.to(x.device)]
    closest = torch.full_like(x_sq, float("inf"))
    for j in range(k):
        if j:
            # sample ∝ squared distance by inverting the CDF at a seeded uniform draw
            cdf = closest.double().cumsum(-1)
            u = torch.rand(pairs, 1, generator=generator, device=generator.device, dtype=torch.float64)
            pick = torch.searchsorted(cdf, u.to(x.device) * cdf[:, -1:]).clamp_max(n - 1)
            centroids[:, j] = x[rows, pick.squeeze(1)]
        c = centroids[:, j]  # [pairs, d]
        dist = x_sq - 2 * torch.bmm(x, c[..., None]).squeeze(-1) + c.square().sum(-1, keepdim=True)
        closest = torch.minimum(closest, dist.clamp_min(0))
    return centroids


def kmeans(
    x: torch.Tensor,
    k: int,
    max_iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    memory_budget: int = 1 << 30,
    progress: Callable[[int, float], None] | None = None,
) -> KMeansResult:
    """k-means++ then Lloyd iterations on ``x`` ``[pairs, n, d]``, all pairs at once.

    Deterministic for a seed on a given device: seeding uses a seeded generator and the
    centroid update is a one-hot GEMM (no atomics). An empty cluster keeps its centroid.
    Stops when every pair's centroid movement (Frobenius norm) is below ``tol``.
    ``memory_budget`` (bytes) bounds the two ``[pairs, chunk, k]`` float32 temporaries.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [pairs, n, d], got {tuple(x.shape)}")
    pairs, n, dim = x.shape
    if n < k:
        raise ValueError(f"need at least k={k} points per pair, got {n}")
    x = x.float()
    chunk = max(64, min(n, memory_budget // (2 * 4 * pairs * k)))  # distances + one-hot
    gen_device = x.device if x.device.type == "cuda" else torch.device("cpu")
    generator = torch.Generator(device=gen_device).manual_seed(seed)
    centroids = _kmeanspp_seed(x, k, generator)
    iters = 0
    for iters in range(1, max_iters + 1):
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(pairs, k, device=x.device)
        for start in range(0, n, chunk):
            xs = x[:, start : start + chunk]
            assign, _ = _nearest(xs, centroids, chunk)
            onehot = torch.zeros(pairs, xs.shape[1], k, device=x.device)
            onehot.scatter_(2, assign[..., None], 1.0)
            sums += torch.bmm(onehot.transpose(1, 2), xs)
            counts += onehot.sum(1)
        empty = counts == 0
        updated = torch.where(empty[..., None], centroids, sums / counts.clamp_min(1)[..., None])
        shift = (updated - centroids).flatten(1).norm(dim=-1)  # [pairs]
        centroids = updated
        worst = float(shift.max())
        if progress is not None:
            progress(iters, worst)
        if worst < tol:
            break
    _, dist = _nearest(x, centroids, chunk)
    return KMeansResult(centroids, iters, dist.mean(-1))


def encode(keys: torch.Tensor, chol: torch.Tensor, centroids_z: torch.Tensor) -> torch.Tensor:
    """Code of each key: ``argmin_j ‖kL − c'_j‖²`` = one GEMM and an argmax.

    ``keys``: pre-RoPE ``[pairs, n, d]``; ``chol``: ``[pairs, d, d]``; ``centroids_z``:
    ``[pairs, K, d]``. Returns ``[pairs, n]`` int64 codes.
    """
    z = torch.bmm(keys.float(), chol.float())
    c = centroids_z.float()
    scores = torch.bmm(z, c.transpose(1, 2)) - 0.5 * c.square().sum(-1)[:, None, :]
    return scores.argmax(-1)
