"""The group-reduced lookup table: the products of the bf16 inputs summed in fp32, reduced over
each GQA group, and a request's entries the same bits whatever its batch."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.kernels.lut import folded_lookup_table

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(a: torch.Tensor, b: torch.Tensor, group: int, reduce: str) -> torch.Tensor:
    """fp32 matmul of the bf16 inputs, then the reduction over each group's columns. # [J, H, C]"""
    full = torch.bmm(a.float(), b.float())  # [H, C, J·G]
    heads, codewords, cols = full.shape
    grouped = full.view(heads, codewords, cols // group, group)
    folded = grouped.amax(3) if reduce == "max" else grouped.mean(3)
    return folded.permute(2, 0, 1)


@pytest.mark.parametrize("dim, group, reduce", [(64, 4, "max"), (48, 3, "max"), (64, 7, "mean"), (64, 1, "max"),
                                                (64, 4, "mean")])
def test_matches_a_reduced_fp32_matmul_of_the_bf16_inputs(dim: int, group: int, reduce: str) -> None:
    g = torch.Generator().manual_seed(0)
    jobs = 37  # not a multiple of a program's groups: the last tile is partial
    a = torch.randn(2, 100, dim, generator=g).bfloat16()
    b = torch.randn(2, dim, jobs * group, generator=g).bfloat16()
    got = folded_lookup_table(a.to(DEVICE), b.to(DEVICE), group, reduce).cpu()
    assert got.shape == (jobs, 2, 100) and got.dtype == torch.float32
    torch.testing.assert_close(got, reference(a, b, group, reduce), rtol=1e-5, atol=1e-4)


def test_max_of_exact_products_is_exact() -> None:
    """Small integers make every sum exact: the folded table equals the reference bit for bit,
    so whatever picks follow from it are those of the per-head table."""
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-4, 5, (3, 130, 32), generator=g).bfloat16()
    b = torch.randint(-4, 5, (3, 32, 9 * 7), generator=g).bfloat16()
    got = folded_lookup_table(a.to(DEVICE), b.to(DEVICE), 7, "max").cpu()
    assert torch.equal(got, reference(a, b, 7, "max"))


def test_writes_into_a_given_buffer_and_rejects_a_bad_one() -> None:
    a = torch.randn(1, 16, 16).bfloat16().to(DEVICE)
    b = torch.randn(1, 16, 8).bfloat16().to(DEVICE)
    out = torch.full((2, 1, 16), 7.0, device=DEVICE)
    assert folded_lookup_table(a, b, 4, "max", out=out) is out
    torch.testing.assert_close(out.cpu(), reference(a.cpu(), b.cpu(), 4, "max"), rtol=1e-5, atol=1e-4)
    with pytest.raises(AssertionError):
        folded_lookup_table(a, b, 3, "max")  # 8 columns are not whole groups of 3
    with pytest.raises(AssertionError):
        folded_lookup_table(a, b, 4, "max", out=torch.empty(2, 1, 15, device=DEVICE))


def batch_invariance(group: int) -> bool:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 4096, 128, generator=g).bfloat16().to(DEVICE)
    b = torch.randn(8, 128, 16 * 9 * group, generator=g).bfloat16().to(DEVICE)
    alone = folded_lookup_table(a, b[:, :, : 9 * group].contiguous(), group)  # one request: 9 buckets
    batched = folded_lookup_table(a, b, group)  # the same request first in a batch of 16
    return torch.equal(alone, batched[:9])


@pytest.mark.gpu
@pytest.mark.parametrize("group", [4, 7])
def test_a_requests_table_does_not_depend_on_its_batch(group: int) -> None:
    assert batch_invariance(group)
