"""Query-aware VQ: whitening, k-means, encoding, and the objective it optimises."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.method.vq import (
    RIDGE,
    encode,
    identity_whitening,
    kmeans,
    whitening_from_moment,
)


def anisotropic_queries(n: int, d: int, seed: int) -> torch.Tensor:
    """Queries whose energy sits in a few directions, like real attention queries."""
    scales = torch.logspace(1, -2, d)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(99)))
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * scales) @ basis.T


def test_whitening_factors_the_normalised_moment() -> None:
    q = anisotropic_queries(4000, 16, 0)
    moment = torch.stack([q.T @ q, (2 * q).T @ (2 * q)])
    w = whitening_from_moment(moment)
    h = moment.double() / moment.double().square().mean((-1, -2), keepdim=True).sqrt()
    h = h + RIDGE * torch.eye(16, dtype=torch.float64)
    torch.testing.assert_close((w.chol.double() @ w.chol.double().transpose(1, 2)), h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w.chol @ w.chol_inv, torch.eye(16).expand(2, 16, 16), atol=1e-3, rtol=0)
    # scale invariance: both pairs had the same H up to a factor
    torch.testing.assert_close(w.chol[0], w.chol[1], atol=1e-5, rtol=1e-5)


def test_whitening_rejects_non_psd_moment() -> None:
    bad = -torch.eye(4)[None]
    with pytest.raises(ValueError, match="not positive definite"):
        whitening_from_moment(bad)


def test_kmeans_recovers_separated_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(2, 8, 4, generator=g) * 20
    labels = torch.randint(0, 8, (2, 800), generator=g)
    x = torch.gather(centers, 1, labels[..., None].expand(-1, -1, 4)) + 0.1 * torch.randn(2, 800, 4, generator=g)
    result = kmeans(x, 8, max_iters=50, seed=0)
    for p in range(2):  # every true centre has a centroid next to it
        dist = torch.cdist(centers[p], result.centroids[p]).min(-1).values
        assert dist.max() < 0.5, dist
    assert result.inertia.max() < 0.1


def test_kmeans_is_deterministic_under_a_seed() -> None:
    x = torch.randn(3, 600, 8)
    a = kmeans(x, 16, max_iters=10, seed=7)
    b = kmeans(x, 16, max_iters=10, seed=7)
    c = kmeans(x, 16, max_iters=10, seed=8)
    assert torch.equal(a.centroids, b.centroids)
    assert not torch.equal(a.centroids, c.centroids)


def test_kmeans_chunking_does_not_change_the_result() -> None:
    x = torch.randn(2, 700, 8)
    whole = kmeans(x, 16, max_iters=5, seed=3)
    chunked = kmeans(x, 16, max_iters=5, seed=3, memory_budget=4 * 2 * 16 * 64)
    torch.testing.assert_close(whole.centroids, chunked.centroids, atol=1e-5, rtol=1e-5)


def test_kmeans_needs_enough_points() -> None:
    with pytest.raises(ValueError, match="at least k=32"):
        kmeans(torch.randn(1, 10, 4), 32)


def test_encode_is_the_argmin_of_the_query_aware_metric() -> None:
    d = 8
    q = anisotropic_queries(2000, d, 2)
    w = whitening_from_moment((q.T @ q)[None])
    keys = torch.randn(1, 300, d)
    cz = torch.randn(1, 32, d)
    codes = encode(keys, w.chol, cz)
    h = w.chol[0].double() @ w.chol[0].double().T  # reference in float64
    c = cz[0].double() @ w.chol_inv[0].double()  # decoded codewords
    diff = keys[0].double()[:, None, :] - c[None]  # [n, K, d]
    brute = torch.einsum("nkd,de,nke->nk", diff, h, diff).argmin(-1)
    assert torch.equal(codes[0], brute)


def score_mse(q: torch.Tensor, keys: torch.Tensor, decoded: torch.Tensor, codes: torch.Tensor) -> float:
    err = (keys - decoded[codes]) @ q.T  # [n, queries]
    return float(err.square().mean())


def test_query_aware_codebook_beats_plain_kmeans_on_score_error() -> None:
    d, n, k = 16, 4000, 64
    q_train, q_test = anisotropic_queries(4000, d, 3), anisotropic_queries(500, d, 4)
    keys = torch.randn(1, n, d) * torch.linspace(3, 0.5, d)
    aware = whitening_from_moment((q_train.T @ q_train)[None])
    plain = identity_whitening(1, d)
    errors = {}
    for name, w in (("aware", aware), ("plain", plain)):
        z = torch.bmm(keys, w.chol)
        cz = kmeans(z, k, max_iters=30, seed=0).centroids
        codes = encode(keys, w.chol, cz)[0]
        errors[name] = score_mse(q_test, keys[0], (cz @ w.chol_inv)[0], codes)
    assert errors["aware"] < 0.7 * errors["plain"], errors
