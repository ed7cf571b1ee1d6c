"""Deterministic extends (runtime/unified_extend.py): SGLang's unified Triton kernel fed from our
slot tables computes exact causal attention, and a row's output does not depend on how its
prompt was split between a cached prefix and new tokens (on CPU through the Triton interpreter;
the ``gpu`` variant on real tensor cores at SmolLM2's and Llama-8B's head sizes)."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.runtime.unified_extend import UnifiedExtend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def row_independent_interpreter_dot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton interpreter's ``tl.dot`` is ``np.matmul``, and OpenBLAS picks its kernel (and so
    its fp32 summation order) by the tile's shape and the CPU it runs on: a row's sum then depends
    on how many rows share its tile, which tensor cores never do. Summing each row's products in
    one fixed order keeps the interpreter a faithful stand-in for the split-invariance check."""
    if DEVICE != "cpu":
        return
    import numpy as np
    from triton.runtime.interpreter import InterpreterBuilder, TensorHandle

    original = InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        if a.data.dtype != np.float32 or b.data.dtype != np.float32:
            return original(self, a, b, d, input_precision, max_num_imprecise_acc)
        products = a.data[..., :, :, None].astype(d.data.dtype) * b.data[..., None, :, :]
        return TensorHandle(products.sum(axis=-2) + d.data, d.dtype.scalar)

    monkeypatch.setattr(InterpreterBuilder, "create_dot", create_dot)


class Pool:
    """K/V tensors with prompts at scattered slots, and a ``req_to_token``-shaped table."""

    def __init__(self, lens: list[int], kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        slots = sum(lens) + 37
        self.k = torch.randn(slots, kv_heads, head_dim, generator=g).to(DEVICE, dtype)
        self.v = torch.randn(slots, kv_heads, head_dim, generator=g).to(DEVICE, dtype)
        perm = torch.randperm(slots, generator=g)[: sum(lens)]
        self.table = torch.zeros(len(lens) + 2, max(lens) + 8, dtype=torch.int32)
        self.rows = torch.tensor([2, 0, 3][: len(lens)], dtype=torch.int64)  # rows need not be 0..bs-1
        start = 0
        for row, n in zip(self.rows.tolist(), lens):
            self.table[row, :n] = perm[start : start + n].to(torch.int32)
            start += n
        self.table = self.table.to(DEVICE)
        self.lens = lens

    def extend(self, q: torch.Tensor, prefix: list[int], scale: float) -> torch.Tensor:
        """Attention of the new rows of each request (positions ``prefix[i]:lens[i]``); ``q``
        holds them concatenated."""
        new = [n - p for n, p in zip(self.lens, prefix)]
        plan = UnifiedExtend.plan(
            self.table, self.rows.to(DEVICE), torch.tensor(self.lens, dtype=torch.int32, device=DEVICE),
            torch.tensor(prefix, dtype=torch.int32, device=DEVICE), torch.tensor(new, dtype=torch.int32, device=DEVICE),
            sum(self.lens), max(new))
        return plan.attend(q, self.k, self.v, scale)

    def reference(self, q_full: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
        """fp32 causal attention of every position of each request over its own keys."""
        out = []
        for row, n, q in zip(self.rows.tolist(), self.lens, q_full):
            slots = self.table[row, :n].long()
            k, v = self.k[slots].float(), self.v[slots].float()  # [n, kv_heads, d]
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            logits = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
            logits = logits.masked_fill(torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
            out.append(torch.einsum("hqk,khd->qhd", logits.softmax(-1), v))
        return out


def queries(lens: list[int], heads: int, head_dim: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, heads, head_dim, generator=g).to(DEVICE, dtype) for n in lens]


def tail(q_full: list[torch.Tensor], prefix: list[int]) -> torch.Tensor:
    return torch.cat([q[p:] for q, p in zip(q_full, prefix)])


def check(lens: list[int], heads: int, kv_heads: int, head_dim: int, splits: list[int], dtype=torch.float32) -> None:
    pool = Pool(lens, kv_heads, head_dim, dtype)
    q_full = queries(lens, heads, head_dim, dtype)
    scale = head_dim**-0.5
    want = pool.reference(q_full, scale)

    cold = pool.extend(tail(q_full, [0] * len(lens)), [0] * len(lens), scale)  # whole prompts
    # bf16 K/V; fp32 runs exact in the interpreter, as TF32 on tensor cores (10-bit mantissa)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4 if DEVICE == "cpu" else 1e-2
    torch.testing.assert_close(cold.float(), torch.cat(want), atol=tol, rtol=tol)

    cold_by_req = list(cold.split(lens))
    for cut in splits:  # a cached prefix of `cut` tokens (or fewer, for a short prompt)
        prefix = [min(cut, n - 1) for n in lens]
        hit = pool.extend(tail(q_full, prefix), prefix, scale)
        for got, full, p in zip(hit.split([n - p for n, p in zip(lens, prefix)]), cold_by_req, prefix):
            assert torch.equal(got, full[p:]), f"rows after a {p}-token prefix differ from a cold prefill's"


def test_exact_attention_and_split_invariant_rows() -> None:
    # 3 query heads per KV head (SmolLM2's grouping); prompts cross tile edges (64, 128)
    check([150, 70], heads=6, kv_heads=2, head_dim=32, splits=[64, 140, 1])


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (32, 8, 128)])
def test_split_invariant_rows_on_tensor_cores(heads: int, kv_heads: int, head_dim: int) -> None:
    # bf16 as served; continuations of 1..21 tokens (≤ 64 packed rows: where FlashInfer's tile changes)
    check([4500, 3000, 700], heads, kv_heads, head_dim, splits=[4096, 4480, 2990, 690, 100], dtype=torch.bfloat16)
