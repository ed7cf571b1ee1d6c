"""Tensor-parallel ranks: the heads each holds (as SGLang's QKV split gives them) and its slice
of the codebook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.method.codebook import Codebook, CodebookError, ModelIdentity
from a2ats_sglang.method.sharding import rank_heads, shard_codebook
from a2ats_sglang.method.vq import encode

CONFIGS = Path(__file__).parent / "configs"


@pytest.mark.parametrize("hq, hkv, tp", [(32, 8, 1), (32, 8, 2), (32, 8, 8), (28, 4, 2), (32, 8, 16), (28, 4, 28)])
def test_ranks_cover_every_head_as_sglang_splits_them(hq: int, hkv: int, tp: int) -> None:
    ranks = [rank_heads(hq, hkv, tp, r) for r in range(tp)]
    assert [q for r in ranks for q in r.q] == list(range(hq))  # query heads: consecutive, each once
    replicas = max(1, tp // hkv)
    for r, heads in enumerate(ranks):
        # SGLang's QKVParallelLinear: kv shard r // replicas of size max(1, hkv // tp)
        per = max(1, hkv // tp)
        assert list(heads.kv) == list(range((r // replicas) * per, (r // replicas + 1) * per))
        # every query head of the rank belongs, in the full model, to one of the rank's kv heads
        assert {q // (hq // hkv) for q in heads.q} <= set(heads.kv)
    assert sorted({k for r in ranks for k in r.kv}) == list(range(hkv))


@pytest.mark.parametrize("hq, hkv, tp, rank", [(32, 8, 3, 0), (32, 8, 12, 0), (30, 6, 4, 0), (32, 8, 2, 2)])
def test_splits_sglang_cannot_make_are_refused(hq: int, hkv: int, tp: int, rank: int) -> None:
    with pytest.raises(CodebookError, match="tp-size|rank"):
        rank_heads(hq, hkv, tp, rank)


def test_a_ranks_codebook_encodes_its_heads_as_the_whole_one_does() -> None:
    config = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())
    config["num_hidden_layers"] = 2
    book = Codebook.random(ModelIdentity.from_hf_config(config), 64, seed=3)
    m = book.meta.model
    keys = torch.randn(m.num_kv_heads, 50, m.head_dim, generator=torch.Generator().manual_seed(4))
    whole = encode(keys, book.chol[1], book.centroids_z[1])  # [Hkv, n]
    for rank in range(2):
        heads = rank_heads(m.num_attention_heads, m.num_kv_heads, 2, rank)
        part = shard_codebook(book, heads)
        assert part.meta.model.num_kv_heads == 4 and part.meta.model.group_size == m.group_size
        assert part.centroids_z.shape == (2, 4, 64, m.head_dim) and part.centroids_z.is_contiguous()
        kv = slice(heads.kv.start, heads.kv.stop)
        assert torch.equal(encode(keys[kv], part.chol[1], part.centroids_z[1]), whole[kv])
        assert torch.equal(part.decoded, book.decoded[:, kv])
