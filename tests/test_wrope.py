"""WRoPE scoring: distance buckets, the paper's single b, and exactness at one bucket per distance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.scores import exact_logits
from a2ats_sglang.method.wrope import DistanceBuckets, wrope_code_logits, wrope_logits

CONFIGS = Path(__file__).parent / "configs"
HQ, HKV, D, S = 6, 2, 64, 300


def rope(name: str = "smollm2-135m") -> RopeSpec:
    return RopeSpec.from_hf_config(json.loads((CONFIGS / f"{name}.json").read_text()))


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-RoPE queries at their positions, and the sequence's pre- and post-RoPE keys."""
    g = torch.Generator().manual_seed(0)
    spec = rope()
    pos = torch.tensor([299, 250, 180, 64])
    q_post = spec.apply(torch.randn(4, HQ, D, generator=g), pos)
    k_pre = torch.randn(S, HKV, D, generator=g)
    return q_post, pos, k_pre, spec.apply(k_pre, torch.arange(S))


def test_bucket_edges() -> None:
    b = DistanceBuckets.log2(64, 8192)
    assert b.edges == (64, 128, 256, 512, 1024, 2048, 4096)
    assert b.representatives == (91, 181, 362, 724, 1448, 2896, 5793)
    d = torch.tensor([-5, 0, 63, 64, 127, 128, 4095, 4096, 10**6])
    assert b.index(d).tolist() == [0, 0, 0, 0, 0, 1, 5, 6, 6]
    assert DistanceBuckets.from_dict(b.to_dict()) == b


@pytest.mark.parametrize(
    "edges, reps, message",
    [((64, 64), (64, 64), "increasing"), ((64, 128), (200, 150), "outside its bucket"), ((64,), (), "one representative")],
)
def test_bad_buckets(edges: tuple, reps: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DistanceBuckets(edges, reps)


def test_one_bucket_is_the_papers_wrope(data) -> None:  # noqa: ANN001
    q_post, pos, k_pre, _ = data
    spec = rope()
    got = wrope_logits(q_post, pos, k_pre, spec, DistanceBuckets.single(64, 2048), 0.125)
    expected = exact_logits(spec.wrope_query(q_post, pos, 2048), k_pre, 0.125)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", ["smollm2-135m", "llama-3.1-8b", "qwen2.5-7b-yarn"])
def test_one_bucket_per_distance_is_exact_rope(name: str) -> None:
    spec = rope(name)
    g = torch.Generator().manual_seed(1)
    d = spec.head_dim
    pos = torch.tensor([299, 120])
    q_post = spec.apply(torch.randn(2, HQ, d, generator=g), pos)
    k_pre = torch.randn(S, HKV, d, generator=g)
    k_post = spec.apply(k_pre, torch.arange(S))
    every = DistanceBuckets(tuple(range(S)), tuple(range(S)))
    got = wrope_logits(q_post, pos, k_pre, spec, every, 0.1)
    exact = exact_logits(q_post, k_post, 0.1)
    for b, p in enumerate(pos.tolist()):  # causal tokens: distance 0..p
        torch.testing.assert_close(got[b, :, : p + 1], exact[b, :, : p + 1], atol=2e-3, rtol=1e-3)


def test_code_logits_look_up_each_tokens_bucket(data) -> None:  # noqa: ANN001
    q_post, pos, _, _ = data
    spec = rope()
    g = torch.Generator().manual_seed(2)
    decoded = torch.randn(HKV, 32, D, generator=g)
    codes = torch.randint(0, 32, (S, HKV), generator=g)
    keys = torch.stack([decoded[h][codes[:, h]] for h in range(HKV)], dim=1)  # the codewords themselves
    for buckets in (DistanceBuckets.single(64, 2048), DistanceBuckets.log2(16, 300)):
        got = wrope_code_logits(q_post, pos, codes, decoded, spec, buckets, 0.25)
        torch.testing.assert_close(got, wrope_logits(q_post, pos, keys, spec, buckets, 0.25), atol=1e-4, rtol=1e-4)


def test_buckets_are_position_free(data) -> None:  # noqa: ANN001
    """Placing the whole sequence later (queries and keys) leaves the scores unchanged."""
    q_post, pos, k_pre, _ = data
    spec = rope()
    shift = 5000
    q_pre = spec.unrotate(q_post, pos)
    buckets = DistanceBuckets.log2(64, 8192)
    base = wrope_logits(q_post, pos, k_pre, spec, buckets, 0.125)
    moved = wrope_logits(spec.apply(q_pre, pos + shift), pos + shift, k_pre, spec, buckets, 0.125, start=shift)
    torch.testing.assert_close(moved, base, atol=2e-3, rtol=1e-3)
