"""The group-reduced lookup table: queries rotated per bucket and rounded to bf16, multiplied by
the bf16 codewords with the products summed in fp32, reduced over each GQA group, and a
request's entries the same bits whatever its batch."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.kernels import lut
from a2ats_sglang.kernels.lut import codeword_runs, folded_lookup_table

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rotated(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, scale: float) -> torch.Tensor:
    """Neox rotation of ``q`` ``[bs, Hq, d]`` by each bucket's angles ``[bs, nb, d/2]``, rounded to
    bf16 as the kernel does. # [bs, nb, Hq, d]"""
    half = q.shape[-1] // 2
    x = q.float()[:, None]  # [bs, 1, Hq, d]
    c, s = cos[:, :, None], sin[:, :, None]  # [bs, nb, 1, d/2]
    lo, hi = x[..., :half], x[..., half:]
    return (torch.cat([lo * c - hi * s, hi * c + lo * s], -1) * scale).bfloat16()


def reference(decoded: torch.Tensor, q_w: torch.Tensor, group: int, reduce: str) -> torch.Tensor:
    """fp32 products of the bf16 inputs, reduced over each group. ``q_w`` ``[bs, nb, Hq, d]`` → ``[bs·nb, Hkv, C]``"""
    bs, nb, q_heads, dim = q_w.shape
    heads = decoded.shape[0]
    logits = torch.einsum("hcd,jhgd->jhgc", decoded.float(), q_w.float().view(bs * nb, heads, group, dim))
    return logits.amax(2) if reduce == "max" else logits.mean(2)


def inputs(bs: int, nb: int, heads: int, group: int, dim: int, codewords: int, seed: int):
    """Queries on a 1/16 grid within ±4 and cos/sin on a 1/64 grid: the rotation's products and
    their sum are then exact in fp32, so a GPU that fuses them into one multiply-add rounds the
    WRoPE query to bf16 exactly as the reference does (the scale's product is the one rounding
    both share)."""
    g = torch.Generator().manual_seed(seed)
    decoded = torch.randn(heads, codewords, dim, generator=g).bfloat16()
    q = (torch.randint(-64, 65, (bs, heads * group, dim), generator=g) / 16).bfloat16()
    angles = torch.rand(bs, nb, dim // 2, generator=g) * 6.3
    return decoded, q, on_grid(angles.cos()), on_grid(angles.sin())


def on_grid(x: torch.Tensor) -> torch.Tensor:
    return (x * 64).round() / 64


@pytest.mark.parametrize("dim, group, reduce", [(64, 4, "max"), (48, 3, "max"), (64, 7, "mean"), (64, 1, "max"),
                                                (64, 4, "mean")])
def test_matches_a_reduced_fp32_matmul_of_the_rotated_bf16_inputs(dim: int, group: int, reduce: str) -> None:
    bs, nb = 5, 7  # 35 (request, bucket) columns: not a multiple of a program's groups
    decoded, q, cos, sin = inputs(bs, nb, 2, group, dim, 100, seed=0)
    got = folded_lookup_table(decoded.to(DEVICE), q.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), group, True, 0.9,
                              reduce).cpu()
    assert got.shape == (bs * nb, 2, 100) and got.dtype == torch.float32
    want = reference(decoded, rotated(q, cos, sin, 0.9), group, reduce)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_max_of_exact_products_is_exact() -> None:
    """No rotation and small integers make every sum exact: the folded table equals the reference
    bit for bit, so whatever picks follow from it are those of the per-head table."""
    g = torch.Generator().manual_seed(1)
    decoded = torch.randint(-4, 5, (3, 130, 32), generator=g).bfloat16()
    q = torch.randint(-4, 5, (3, 3 * 7, 32), generator=g).bfloat16()
    cos, sin = torch.ones(3, 2, 16), torch.zeros(3, 2, 16)  # two buckets, both the identity
    got = folded_lookup_table(decoded.to(DEVICE), q.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), 7, True).cpu()
    assert torch.equal(got, reference(decoded, q[:, None].expand(3, 2, 21, 32), 7, "max"))


def test_partial_and_interleaved_rotation() -> None:
    """GPT-J pairs (2i, 2i+1) over the first 16 of 32 dimensions; the rest only scaled."""
    decoded, q, _, _ = inputs(2, 3, 1, 2, 32, 40, seed=2)
    angles = torch.rand(2, 3, 8, generator=torch.Generator().manual_seed(3)) * 6.3
    cos, sin = on_grid(angles.cos()), on_grid(angles.sin())
    got = folded_lookup_table(decoded.to(DEVICE), q.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), 2, False, 1.5).cpu()
    x = q.float()[:, None].expand(2, 3, 2, 32).clone()
    ev, od = x[..., 0:16:2].clone(), x[..., 1:16:2].clone()
    c, s = cos[:, :, None], sin[:, :, None]
    x[..., 0:16:2], x[..., 1:16:2] = ev * c - od * s, od * c + ev * s
    torch.testing.assert_close(got, reference(decoded, (x * 1.5).bfloat16(), 2, "max"), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("block_c", [64, 128])  # the tuning sweep's tiles (benchmarks.kernel_tuning)
def test_every_codeword_tile_gives_the_same_table(block_c: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lut, "BLOCK_C", block_c)
    decoded, q, cos, sin = inputs(3, 5, 2, 4, 64, 300, seed=3)  # 300 codewords: a partial last tile either way
    got = folded_lookup_table(decoded.to(DEVICE), q.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), 4, True, 0.9).cpu()
    torch.testing.assert_close(got, reference(decoded, rotated(q, cos, sin, 0.9), 4, "max"), rtol=1e-5, atol=1e-4)


def test_long_codeword_runs_cover_every_tile_once() -> None:
    """2,600 codewords: 41 tiles, the last one partial, split into runs of several tiles each
    (the runs do not divide the tiles evenly either)."""
    decoded, q, cos, sin = inputs(1, 1, 2, 2, 32, 2600, seed=6)
    got = folded_lookup_table(decoded.to(DEVICE), q.to(DEVICE), cos.to(DEVICE), sin.to(DEVICE), 2, True).cpu()
    want = reference(decoded, rotated(q, cos, sin, 1.0), 2, "max")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_runs_fill_the_gpu_and_never_exceed_the_tiles() -> None:
    assert codeword_runs(programs=8, tiles=64, sms=132) == 32  # batch 1: the GPU wants 66, runs of 2 tiles at least
    assert codeword_runs(programs=8, tiles=1, sms=132) == 1
    assert codeword_runs(programs=128, tiles=64, sms=132) == 5  # batch 32: 640 programs, runs of 13 tiles
    assert codeword_runs(programs=4096, tiles=64, sms=132) == 1


def test_writes_into_a_given_buffer_and_rejects_a_bad_one() -> None:
    decoded, q, cos, sin = (t.to(DEVICE) for t in inputs(1, 2, 1, 4, 16, 16, seed=4))
    out = torch.full((2, 1, 16), 7.0, device=DEVICE)
    assert folded_lookup_table(decoded, q, cos, sin, 4, True, out=out) is out
    want = reference(decoded.cpu(), rotated(q.cpu(), cos.cpu(), sin.cpu(), 1.0), 4, "max")
    torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(AssertionError):
        folded_lookup_table(decoded, q, cos, sin, 3, True)  # 4 query heads are not groups of 3 per kv head
    with pytest.raises(AssertionError):
        folded_lookup_table(decoded, q, cos, sin, 4, True, out=torch.empty(2, 1, 15, device=DEVICE))


def batch_invariance(group: int) -> bool:
    decoded, q, cos, sin = (t.to(DEVICE) for t in inputs(16, 9, 8, group, 128, 4096, seed=5))
    alone = folded_lookup_table(decoded, q[:1].contiguous(), cos[:1].contiguous(), sin[:1].contiguous(), group, True)
    batched = folded_lookup_table(decoded, q, cos, sin, group, True)  # the same request first in a batch of 16
    return torch.equal(alone, batched[:9])


@pytest.mark.gpu
@pytest.mark.parametrize("group", [4, 7])
def test_a_requests_table_does_not_depend_on_its_batch(group: int) -> None:
    assert batch_invariance(group)
