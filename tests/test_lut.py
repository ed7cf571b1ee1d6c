"""The fixed-tiling lookup-table GEMM: the products of the bf16 inputs summed in fp32, and a
column's entries the same bits whatever the number of columns around it."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.kernels.lut import lookup_table_gemm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dim", [64, 48])
def test_matches_an_fp32_matmul_of_the_bf16_inputs(dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 100, dim, generator=g).bfloat16()
    b = torch.randn(2, dim, 70, generator=g).bfloat16()
    got = lookup_table_gemm(a.to(DEVICE), b.to(DEVICE)).cpu()
    want = torch.bmm(a.float(), b.float())
    assert got.shape == (2, 100, 70)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def batch_invariance(gemm) -> bool:  # noqa: ANN001
    g = torch.Generator().manual_seed(1)
    a = torch.randn(8, 4096, 128, generator=g).bfloat16().to(DEVICE)
    b = torch.randn(8, 128, 16 * 9 * 4, generator=g).bfloat16().to(DEVICE)
    alone = gemm(a, b[:, :, :36].contiguous())  # one request (9 buckets × 4 query heads)
    batched = gemm(a, b)  # the same request first in a batch of 16
    return torch.equal(alone, batched[:, :, :36])


@pytest.mark.gpu
def test_a_requests_table_does_not_depend_on_its_batch() -> None:
    assert batch_invariance(lookup_table_gemm)
    # what the fixed tiling guards against (informative: cuBLAS may or may not differ here)
    print("cuBLAS bmm batch-invariant here:", batch_invariance(lambda a, b: torch.ops.aten.bmm.dtype(a, b, torch.float32)))
