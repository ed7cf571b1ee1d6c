"""Selectors, scores and the reference sparse attention against brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from a2ats_sglang.method.scores import exact_logits, exact_probs, quest_page_bounds
from a2ats_sglang.method.selection import (
    attention_recall,
    budget_tokens,
    protected_mask,
    select_per_kv_head,
    select_union,
    sparse_attention,
)

HQ, HKV, D, S = 6, 2, 16, 96


@pytest.fixture
def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, HQ, D, generator=g), torch.randn(S, HKV, D, generator=g), torch.randn(S, HKV, D, generator=g)


def test_protected_mask_edges() -> None:
    lengths = torch.tensor([5, 20, 96])
    m = protected_mask(lengths, S, sinks=3, window=8)
    assert m[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4]  # short: everything visible
    assert m[1].nonzero().flatten().tolist() == [0, 1, 2, *range(12, 20)]
    assert m[2].sum() == 11 and m[2, 95] and m[2, 88] and not m[2, 87]


def test_budget_tokens_clamps() -> None:
    lengths = torch.tensor([10, 1000, 100000])
    assert budget_tokens(lengths, 0.03).tolist() == [1, 30, 3000]
    assert budget_tokens(lengths, 0.03, minimum=16, maximum=2048).tolist() == [16, 30, 2048]


def brute_per_kv_head(scores, lengths, budget, sinks, window, reduce):  # noqa: ANN001
    out = torch.zeros(scores.shape[0], HKV, S, dtype=torch.bool)
    g = HQ // HKV
    for b in range(scores.shape[0]):
        n = int(lengths[b])
        for h in range(HKV):
            group = scores[b, h * g : (h + 1) * g, :n]
            ranked = group.max(0).values if reduce == "max" else group.mean(0)
            protected = {i for i in range(n) if i < sinks or i >= n - window}
            cands = sorted((i for i in range(n) if i not in protected), key=lambda i: -float(ranked[i]))
            for i in list(protected) + cands[:budget]:
                out[b, h, i] = True
    return out


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_select_per_kv_head_matches_brute_force(qkv, reduce: str) -> None:  # noqa: ANN001
    q, k, _ = qkv
    scores = exact_logits(q, k, 1.0)
    lengths = torch.tensor([96, 60, 20, 13])
    got = select_per_kv_head(scores, lengths, 7, HKV, sinks=2, window=5, reduce=reduce)
    assert torch.equal(got, brute_per_kv_head(scores, lengths, 7, 2, 5, reduce))
    # fixed budget: sinks + window + K whenever enough candidates exist
    assert got[0].sum(-1).tolist() == [2 + 5 + 7] * HKV
    assert got[3].sum(-1).tolist() == [13] * HKV  # only 6 candidates for K = 7
    assert not got[2, :, 20:].any()  # never beyond the query


def test_per_request_budget(qkv) -> None:  # noqa: ANN001
    q, k, _ = qkv
    scores = exact_logits(q, k, 1.0)
    lengths = torch.tensor([96, 96, 96, 96])
    got = select_per_kv_head(scores, lengths, torch.tensor([0, 1, 5, 30]), HKV, sinks=1, window=1)
    assert got.sum(-1)[:, 0].tolist() == [2, 3, 7, 32]


def test_select_union_matches_per_head_topk(qkv) -> None:  # noqa: ANN001
    q, k, _ = qkv
    scores = exact_logits(q, k, 1.0)
    lengths = torch.full((4,), S)
    got = select_union(scores, lengths, 4, HKV, sinks=2, window=3)
    g = HQ // HKV
    for b in range(4):
        for h in range(HKV):
            expected = set(range(2)) | set(range(S - 3, S))
            for qh in range(h * g, (h + 1) * g):
                s = scores[b, qh].clone()
                s[:2] = s[S - 3 :] = -math.inf
                expected |= set(s.topk(4).indices.tolist())
            assert set(got[b, h].nonzero().flatten().tolist()) == expected


def test_oracle_maximises_mean_recall(qkv) -> None:  # noqa: ANN001
    q, k, _ = qkv
    lengths = torch.full((4,), S)
    probs = exact_probs(q, k, lengths, 0.5)
    oracle = select_per_kv_head(probs, lengths, 10, HKV, 1, 4, reduce="mean")
    best = attention_recall(probs, oracle).mean()
    for scores in (exact_logits(q, k, 0.5), torch.randn(4, HQ, S)):
        for sel in (
            select_per_kv_head(scores, lengths, 10, HKV, 1, 4),
            select_per_kv_head(scores, lengths, 10, HKV, 1, 4, reduce="mean"),
        ):
            assert attention_recall(probs, sel).mean() <= best + 1e-6
    full = select_per_kv_head(probs, lengths, S, HKV, 1, 4)
    torch.testing.assert_close(attention_recall(probs, full), torch.ones(4, HQ))


def test_sparse_attention_dense_equals_sdpa(qkv) -> None:  # noqa: ANN001
    q, k, v = qkv
    lengths = torch.tensor([96, 50, 10, 1])
    mask = (torch.arange(S)[None, :] < lengths[:, None])[:, None, :].expand(-1, HKV, -1)
    got = sparse_attention(q, k, v, mask, D**-0.5)
    for b in range(4):
        n = int(lengths[b])
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[b][:, None, :], k[:n].transpose(0, 1).repeat_interleave(3, 0), v[:n].transpose(0, 1).repeat_interleave(3, 0)
        )[:, 0]
        torch.testing.assert_close(got[b], ref, atol=1e-5, rtol=1e-5)


def test_sparse_attention_ignores_unselected_tokens(qkv) -> None:  # noqa: ANN001
    q, k, v = qkv
    mask = torch.zeros(4, HKV, S, dtype=torch.bool)
    mask[..., :10] = True
    v2 = v.clone()
    v2[10:] = 1e6  # unselected values must not leak
    torch.testing.assert_close(sparse_attention(q, k, v, mask, 0.3), sparse_attention(q, k, v2, mask, 0.3))


def test_quest_bound_is_an_upper_bound(qkv) -> None:  # noqa: ANN001
    q, k, _ = qkv
    bound = quest_page_bounds(q, k, 16, 1.0)
    exact = exact_logits(q, k, 1.0)
    assert (bound >= exact - 1e-5).all()
    # constant over each page, so page selection keeps whole pages
    assert torch.equal(bound[..., 16:32], bound[..., 16:17].expand(-1, -1, 16))
    lengths = torch.full((4,), S)
    sel = select_per_kv_head(bound, lengths, 20, HKV, sinks=0, window=1, page_size=16)
    chosen = sel[..., :80].view(4, HKV, 5, 16)
    assert ((chosen.all(-1)) | (~chosen.any(-1))).all()  # pages all-or-nothing
    assert (chosen.all(-1).sum(-1) == 2).all()  # ⌈20 / 16⌉ pages
