"""Triton kernels against their pure-torch references (on CPU through the Triton interpreter).

Small shapes keep the interpreter fast; the ``gpu`` tests add serving-sized shapes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from a2ats_sglang.kernels import score, select
from a2ats_sglang.kernels.encode import encode_keys, encode_projection, encode_workspace
from a2ats_sglang.kernels.score import score_tokens
from a2ats_sglang.kernels.select import (
    select_and_write,
    topk_rows,
    topk_workspace,
    write_selected,
)

from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.scores import lookup_table
from a2ats_sglang.method.vq import encode, whitening_from_moment
from a2ats_sglang.method.wrope import DistanceBuckets, wrope_code_logits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = Path(__file__).parent / "configs"
INF = float("inf")


def as_int16(code: torch.Tensor) -> torch.Tensor:
    """Low 16 bits of codes in [0, 65536), as the pool stores them."""
    return torch.where(code >= 32768, code - 65536, code).to(torch.int16)


# -- encode ----------------------------------------------------------------------------------


def codebook(kv_heads: int, dim: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A whitening factor from a random query moment, and whitened centroids."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4 * dim, dim, generator=g) * torch.linspace(2, 0.3, dim)
    chol = whitening_from_moment((q.T @ q)[None].repeat(kv_heads, 1, 1)).chol
    return chol, torch.randn(kv_heads, size, dim, generator=g)


def check_codes(got: torch.Tensor, keys: torch.Tensor, chol: torch.Tensor, cz: torch.Tensor) -> None:
    """``got`` ``[n, Hkv]`` equals ``vq.encode`` up to fp32 near-ties between the two candidates."""
    expected = encode(keys.permute(1, 0, 2).float(), chol, cz).t()  # [n, Hkv]
    got = got.long() & 0xFFFF
    z = torch.bmm(keys.permute(1, 0, 2).float().double(), chol.double())  # [Hkv, n, d]
    dist = torch.cdist(z, cz.double()).square()  # [Hkv, n, C]
    d_got = dist.gather(2, got.t()[..., None]).squeeze(-1)
    d_exp = dist.gather(2, expected.t()[..., None]).squeeze(-1)
    differ = got.t() != expected.t()
    assert differ.float().mean() < 0.01
    torch.testing.assert_close(d_got[differ], d_exp[differ], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, split", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_encode_matches_vq_encode(dtype: torch.dtype, split: bool) -> None:
    kv_heads, dim, size, n, slots = 2, 64, 300, 70, 200
    chol, cz = codebook(kv_heads, dim, size, seed=0)
    keys = torch.randn(n, kv_heads, dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    loc = torch.randperm(slots, generator=torch.Generator().manual_seed(2))[:n]
    proj, half_norm = encode_projection(chol.to(DEVICE), cz.to(DEVICE))
    assert proj.shape == (kv_heads, dim, size) and proj.is_contiguous() and half_norm.shape == (kv_heads, size)
    codes = torch.full((slots, kv_heads), -7, dtype=torch.int16, device=DEVICE)
    workspace = encode_workspace(n, kv_heads, size, DEVICE) if split else None
    encode_keys(keys.to(DEVICE), proj, half_norm, loc.to(DEVICE).int(), codes, workspace=workspace)
    codes = codes.cpu()
    untouched = torch.ones(slots, dtype=torch.bool)
    untouched[loc] = False
    assert (codes[untouched] == -7).all()
    check_codes(codes[loc], keys, chol, cz)


def test_encode_of_a_prefill_chunk_is_the_same_for_every_tiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,024 keys or more take :data:`~a2ats_sglang.kernels.encode.LARGE_CONFIG`; every tiling the
    tuning sweep tries gives the same codes (the tiles decide who computes what, not the sums)."""
    from a2ats_sglang.kernels import encode as encode_mod
    from benchmarks.kernel_tuning import ENCODE_KNOBS

    kv_heads, dim, size, n = 1, 16, 200, 1100
    chol, cz = codebook(kv_heads, dim, size, seed=3)
    keys = torch.randn(n, kv_heads, dim, generator=torch.Generator().manual_seed(4)).bfloat16()
    proj, half_norm = encode_projection(chol.to(DEVICE), cz.to(DEVICE))
    loc = torch.arange(n, device=DEVICE)
    (_, _, configs, _), = ENCODE_KNOBS
    got = []
    for config in configs:
        monkeypatch.setattr(encode_mod, "LARGE_CONFIG", config)
        codes = torch.zeros(n, kv_heads, dtype=torch.int16, device=DEVICE)
        encode_keys(keys.to(DEVICE), proj, half_norm, loc, codes)
        got.append(codes.cpu())
    check_codes(got[0], keys, chol, cz)
    for config, codes in zip(configs[1:], got[1:]):
        assert torch.equal(codes, got[0]), config


@pytest.mark.parametrize("split", [False, True])
def test_encode_every_layer_in_one_launch(split: bool) -> None:
    """``layer_pointers``: the keys at the given slots of three separately allocated layer pools,
    encoded against each layer's codebook in one launch, get the codes one launch per layer gives;
    slot −1 is skipped in every layer."""
    layers, kv_heads, dim, size, slots = 3, 2, 32, 300, 50
    pools = [torch.randn(slots, kv_heads, dim, generator=torch.Generator().manual_seed(60 + i)).bfloat16().to(DEVICE)
             for i in range(layers)]
    books = [codebook(kv_heads, dim, size, seed=70 + i) for i in range(layers)]
    pairs = [encode_projection(chol.to(DEVICE), cz.to(DEVICE)) for chol, cz in books]
    proj = torch.stack([p for p, _ in pairs])
    half_norm = torch.stack([h for _, h in pairs])
    loc = torch.tensor([3, -1, 17, 40, -1, 8], device=DEVICE)
    ws = encode_workspace(len(loc) * layers, kv_heads, size, DEVICE) if split else None
    want = torch.full((layers, slots, kv_heads), -7, dtype=torch.int16, device=DEVICE)
    for i in range(layers):
        encode_keys(pools[i], proj[i], half_norm[i], loc, want[i], workspace=ws, gather=True)
    got = torch.full_like(want, -7)
    pointers = torch.tensor([p.data_ptr() for p in pools], dtype=torch.int64, device=DEVICE)
    encode_keys(pools[0], proj, half_norm, loc, got, workspace=ws, gather=True, layer_pointers=pointers)
    assert torch.equal(got, want)
    assert (got[:, [3, 17, 40, 8]] != -7).all() and not torch.equal(got[0], got[1])  # each layer its own codebook


@pytest.mark.parametrize("layered", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_encode_reads_each_key_where_its_slot_lives(split: bool, layered: bool) -> None:
    """With GPU homes, slots up to ``homes`` are read from the GPU pool and the rest from their
    host rows (slot − homes): the codes equal those of one pool holding every key."""
    layers, kv_heads, dim, size, slots, homes = 2, 2, 32, 300, 60, 25
    g = torch.Generator().manual_seed(81)
    full = [torch.randn(slots, kv_heads, dim, generator=g).bfloat16().to(DEVICE) for _ in range(layers)]
    gpu = [torch.cat([f[: homes + 1], torch.randn(9, kv_heads, dim, generator=g).bfloat16().to(DEVICE)]) for f in full]
    host = [torch.cat([torch.zeros(1, kv_heads, dim, dtype=torch.bfloat16, device=DEVICE), f[homes + 1 :]])
            for f in full]  # host row 0 is the GPU-homed slot `homes`: unused
    books = [codebook(kv_heads, dim, size, seed=90 + i) for i in range(layers)]
    pairs = [encode_projection(chol.to(DEVICE), cz.to(DEVICE)) for chol, cz in books]
    proj, half_norm = torch.stack([p for p, _ in pairs]), torch.stack([h for _, h in pairs])
    loc = torch.tensor([3, -1, homes, homes + 1, 40, 59, 1, -1], device=DEVICE)
    ws = encode_workspace(len(loc) * layers, kv_heads, size, DEVICE) if split else None
    want = torch.full((layers, slots, kv_heads), -7, dtype=torch.int16, device=DEVICE)
    for i in range(layers):
        encode_keys(full[i], proj[i], half_norm[i], loc, want[i], workspace=ws, gather=True)
    got = torch.full_like(want, -7)
    if layered:
        pointers = [torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=DEVICE) for ts in (gpu, host)]
        encode_keys(gpu[0], proj, half_norm, loc, got, workspace=ws, gather=True, layer_pointers=pointers[0],
                    homes=homes, host_keys=pointers[1])
    else:
        for i in range(layers):
            encode_keys(gpu[i], proj[i], half_norm[i], loc, got[i], workspace=ws, gather=True, homes=homes,
                        host_keys=host[i])
    assert torch.equal(got, want)
    assert (got[:, [3, homes, homes + 1, 40, 59, 1]] != -7).all()


@pytest.mark.parametrize("split", [False, True])
def test_encode_codes_past_int16_round_trip(split: bool) -> None:
    """A 40000-word codebook: keys sitting on codewords ≥ 32768 get exactly those codes."""
    dim, size = 4, 40000
    cz = torch.randn(1, size, dim, generator=torch.Generator().manual_seed(3))
    chol = torch.eye(dim)[None]
    want = torch.tensor([0, 5, 32767, 32768, 39999, 35000, 20000, 65535 % size])
    keys = cz[0, want][:, None, :]  # [n, 1, d]: z = k·I = the codeword itself
    proj, half_norm = encode_projection(chol.to(DEVICE), cz.to(DEVICE))
    codes = torch.zeros(16, 1, dtype=torch.int16, device=DEVICE)
    loc = torch.arange(8, 16, device=DEVICE)  # int64
    if split:
        encode_keys(keys.to(DEVICE), proj, half_norm, loc, codes, workspace=encode_workspace(8, 1, size, DEVICE))
    else:
        encode_keys(keys.to(DEVICE), proj, half_norm, loc, codes, block_c=1024 if DEVICE == "cpu" else 64)
    assert (codes[8:, 0].long().cpu() & 0xFFFF).tolist() == want.tolist()
    assert codes[8 + 3, 0] < 0  # 32768 is stored as its low 16 bits
    assert (codes[:8] == 0).all()


def test_encode_nothing() -> None:
    proj, half_norm = encode_projection(torch.eye(8)[None].to(DEVICE), torch.randn(1, 32, 8).to(DEVICE))
    codes = torch.zeros(4, 1, dtype=torch.int16, device=DEVICE)
    encode_keys(torch.empty(0, 1, 8, device=DEVICE), proj, half_norm, torch.empty(0, dtype=torch.int64, device=DEVICE), codes)
    assert (codes == 0).all()


@pytest.mark.parametrize("split", [False, True])
def test_encode_ties_take_the_lowest_index(split: bool) -> None:
    cz = torch.zeros(1, 300, 16)
    cz[0, 7] = cz[0, 200] = cz[0, 250] = torch.ones(16)  # equal codewords, in different tiles
    proj, half_norm = encode_projection(torch.eye(16)[None].to(DEVICE), cz.to(DEVICE))
    codes = torch.zeros(2, 1, dtype=torch.int16, device=DEVICE)
    keys = torch.stack([torch.ones(1, 16), -torch.ones(1, 16)])  # [2, 1, 16]
    workspace = encode_workspace(2, 1, 300, DEVICE) if split else None  # 3 splits of 128
    encode_keys(keys.to(DEVICE), proj, half_norm, torch.arange(2, device=DEVICE), codes, workspace=workspace)
    assert codes[:, 0].tolist() == [7, 0]  # the second key ties every zero codeword: lowest is 0


# -- score -----------------------------------------------------------------------------------


class Batch:
    """A decode batch over a paged pool: ``req_to_token`` rows hold scattered slots."""

    def __init__(self, lens: list[int], kv_heads: int, size: int, max_ctx: int, seed: int, pool_rows: list[int] | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        slots = 4 * max_ctx + 8
        self.lens = torch.tensor(lens)
        self.pool = torch.tensor(pool_rows if pool_rows is not None else [i + 1 for i in range(len(lens))])
        rows = int(self.pool.max()) + 1
        self.req_to_token = torch.stack([torch.randperm(slots, generator=g)[:max_ctx] for _ in range(rows)]).int()
        self.codes_long = torch.randint(0, size, (slots, kv_heads), generator=g)
        self.codes = as_int16(self.codes_long)


def score_reference(
    lut: torch.Tensor, batch: Batch, edges: list[int], sinks: int, window: int, L: int, reduce: str
) -> torch.Tensor:
    """Plain-indexing reference of :func:`score_tokens`. # [bs * Hkv, L] float32"""
    bs, nb, q_heads, _ = lut.shape
    kv_heads = batch.codes.shape[1]
    group = q_heads // kv_heads
    out = torch.empty(bs * kv_heads, L)
    for b in range(bs):
        n = int(batch.lens[b])
        for g in range(kv_heads):
            for t in range(L):
                if t >= n:
                    value = -INF
                elif t < sinks or t >= n - window:
                    value = INF
                else:
                    dist = n - 1 - t
                    k = max([j for j in range(nb) if edges[j] <= dist], default=0)
                    slot = int(batch.req_to_token[batch.pool[b], t])
                    code = int(batch.codes[slot, g]) & 0xFFFF
                    heads = lut[b, k, g * group : (g + 1) * group, code]
                    value = float(heads.max() if reduce == "max" else heads.mean())
                out[b * kv_heads + g, t] = value
    return out


def fold(lut: torch.Tensor, kv_heads: int, reduce: str) -> torch.Tensor:
    """``[bs, nb, Hq, C]`` per-query-head tables → ``[bs, nb, Hkv, C]`` group-reduced ones, as
    :func:`folded_lookup_table` writes them."""
    bs, nb, q_heads, size = lut.shape
    grouped = lut.view(bs, nb, kv_heads, q_heads // kv_heads, size)
    return grouped.amax(3) if reduce == "max" else grouped.mean(3)


def run_score(
    lut: torch.Tensor, batch: Batch, edges: list[int], sinks: int, window: int, L: int, reduce: str, rows_cap: int,
    strided: bool = False, head_major_codes: bool = False,
) -> torch.Tensor:
    out = torch.full((rows_cap, L), 123.0, device=DEVICE)
    table = fold(lut, batch.codes.shape[1], reduce).to(DEVICE)
    if strided:  # a [bs, nb, Hkv, C] view of a [bs, Hkv, nb, C] buffer
        table = table.transpose(1, 2).contiguous().transpose(1, 2)
    codes = batch.codes.to(DEVICE)
    if head_major_codes:  # a [slots, Hkv] view of [Hkv, slots] memory: each kv head's codes contiguous
        codes = codes.t().contiguous().t()
    score_tokens(
        table, codes, batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE),
        batch.lens.to(DEVICE), torch.tensor(edges, dtype=torch.int32, device=DEVICE), sinks, window, out, block=64,
    )
    return out.cpu()


@pytest.mark.parametrize(
    "edges, group, reduce, strided",
    [
        ([8], 1, "max", False),
        ([8], 3, "max", False),
        ([8, 16, 32, 64], 3, "max", False),
        ([8, 16, 32, 64], 3, "mean", False),
        ([8, 20], 1, "mean", False),
        ([8, 16, 32, 64], 3, "max", True),
    ],
)
@pytest.mark.parametrize("heads", [1, 2])  # kv heads a program scores
def test_score_matches_reference(edges: list[int], group: int, reduce: str, strided: bool, heads: int,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(score, "HEADS_PER_PROGRAM", heads)
    assert score.program_heads(2) == heads
    kv_heads, size, L, sinks, window = 2, 33000, 150, 4, edges[0]
    lens = [140, 1, 11, 13, 150, 70]  # len 1, len < sinks + window, len = sinks + window + 1, full
    batch = Batch(lens, kv_heads, size, max_ctx=160, seed=4)
    assert (batch.codes < 0).any()  # codes ≥ 32768 are read back with & 0xFFFF
    lut = torch.randn(len(lens), len(edges), group * kv_heads, size, generator=torch.Generator().manual_seed(5))
    got = run_score(lut, batch, edges, sinks, window, L, reduce, rows_cap=len(lens) * kv_heads + 3, strided=strided)
    expected = score_reference(lut, batch, edges, sinks, window, L, reduce)
    torch.testing.assert_close(got[: len(lens) * kv_heads], expected, rtol=1e-6, atol=1e-6)
    assert (got[len(lens) * kv_heads :] == 123.0).all()  # rows past bs·Hkv untouched


@pytest.mark.parametrize("warps", [4, 8])
def test_score_of_head_major_codes_matches_reference(warps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The score kernel reads codes through their strides: a head-major code pool (and any warp
    count) scores the same as the reference."""
    monkeypatch.setattr(score, "SCORE_WARPS", warps)
    edges, kv_heads, size, L, sinks, window = [8, 16, 32], 4, 4096, 150, 4, 8
    lens = [140, 13, 150]
    batch = Batch(lens, kv_heads, size, max_ctx=160, seed=7)
    lut = torch.randn(len(lens), len(edges), 2 * kv_heads, size, generator=torch.Generator().manual_seed(8))
    got = run_score(lut, batch, edges, sinks, window, L, "max", rows_cap=len(lens) * kv_heads, head_major_codes=True)
    torch.testing.assert_close(got, score_reference(lut, batch, edges, sinks, window, L, "max"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target, runs", [(0, 1), (1000, 3)])  # a run of every block per row; a block per run
@pytest.mark.parametrize("edges", [[8, 16, 32, 64], [8]])
@pytest.mark.parametrize("heads", [1, 4])
def test_score_runs_of_any_length_match_the_reference(target: int, runs: int, edges: list[int], heads: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """However a row's columns are shared out into runs, and its kv heads over programs, each
    column is scored once and each column past its length padded with −inf."""
    monkeypatch.setattr(score, "RUN_TARGET", target)
    monkeypatch.setattr(score, "HEADS_PER_PROGRAM", heads)
    kv_heads, size, L, sinks, window = 4, 500, 150, 4, 8
    lens = [140, 1, 150, 70, 129]
    assert score.score_runs(len(lens) * 2, 1, L, 64, 8) == runs
    batch = Batch(lens, kv_heads, size, max_ctx=160, seed=7)
    lut = torch.randn(len(lens), len(edges), 3 * kv_heads, size, generator=torch.Generator().manual_seed(8))
    got = run_score(lut, batch, edges, sinks, window, L, "max", rows_cap=len(lens) * kv_heads)
    torch.testing.assert_close(got, score_reference(lut, batch, edges, sinks, window, L, "max"), rtol=1e-6, atol=1e-6)


def test_program_heads_divide_the_kv_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(score, "HEADS_PER_PROGRAM", 8)
    assert [score.program_heads(h) for h in (8, 4, 6, 1, 16)] == [8, 4, 2, 1, 8]
    monkeypatch.setattr(score, "HEADS_PER_PROGRAM", 3)  # not a power of two: the largest below
    assert score.program_heads(8) == 2


def test_score_runs_at_serving_shapes() -> None:
    """H200 (132 SMs), Llama-3.1-8B's 8 kv heads, 32K contexts, the top-K's splits."""
    assert score.score_runs(8, 16, 32768, 512, 132) == 4  # batch 1: a block per program, 512 programs
    assert score.score_runs(256, 4, 32768, 512, 132) == 5  # batch 32: 5 runs of 3-4 blocks per split, 5,120 programs


def test_score_padded_rows_and_no_protection() -> None:
    """CUDA-graph padding rows (pool row 0, len 1) and sinks = window = 0."""
    batch = Batch([50, 1, 1], kv_heads=1, size=64, max_ctx=64, seed=6, pool_rows=[2, 0, 0])
    lut = torch.randn(3, 1, 2, 64, generator=torch.Generator().manual_seed(7))
    for sinks, window in ((0, 0), (3, 5)):
        got = run_score(lut, batch, [window], sinks, window, 64, "max", rows_cap=3)
        torch.testing.assert_close(got, score_reference(lut, batch, [window], sinks, window, 64, "max"))
    assert got[1, 0] == INF and (got[1, 1:] == -INF).all()


def rope() -> RopeSpec:
    return RopeSpec.from_hf_config(json.loads((CONFIGS / "smollm2-135m.json").read_text()))


def test_score_agrees_with_wrope_code_logits() -> None:
    """Log2 buckets and a real RoPE: the kernel's scores are the group max of ``wrope_code_logits``."""
    spec, kv_heads, q_heads, dim, size, seq, window, sinks = rope(), 3, 9, 64, 256, 300, 16, 4
    g = torch.Generator().manual_seed(8)
    buckets = DistanceBuckets.log2(window, seq)
    lens = torch.tensor([300, 257, 120, 40])
    pos = lens - 1
    q_post = spec.apply(torch.randn(len(lens), q_heads, dim, generator=g), pos)
    decoded = torch.randn(kv_heads, size, dim, generator=g)
    codes = torch.randint(0, size, (seq, kv_heads), generator=g)
    scale = dim**-0.5
    expected = wrope_code_logits(q_post, pos, codes, decoded, spec, buckets, scale)  # [B, Hq, S]
    expected = expected.view(len(lens), kv_heads, q_heads // kv_heads, seq).amax(2).reshape(-1, seq)
    # the table as wrope_code_logits builds it
    q = buckets.queries(q_post, pos, spec)  # [B, nb, Hq, d]
    nb = q.shape[1]
    lut = lookup_table(q.reshape(-1, q_heads, dim), decoded, scale).view(len(lens), nb, q_heads, size)
    # one sequence, stored at scattered slots; every request reads its prefix
    slots = torch.randperm(2 * seq, generator=g)[:seq]
    pool_codes = torch.zeros(2 * seq, kv_heads, dtype=torch.int16)
    pool_codes[slots] = codes.to(torch.int16)
    req_to_token = slots.int()[None].repeat(len(lens), 1)
    out = torch.empty(len(lens) * kv_heads, seq, device=DEVICE)
    score_tokens(
        fold(lut, kv_heads, "max").to(DEVICE), pool_codes.to(DEVICE), req_to_token.to(DEVICE), torch.arange(len(lens), device=DEVICE),
        lens.to(DEVICE), torch.tensor(buckets.edges, dtype=torch.int32, device=DEVICE), sinks, window, out, block=128,
    )
    out = out.cpu()
    t = torch.arange(seq)[None]
    lens_rows = lens.repeat_interleave(kv_heads)[:, None]
    scored = (t >= sinks) & (t < lens_rows - window)
    assert nb == 5 and scored.any()
    torch.testing.assert_close(out[scored], expected[scored])
    assert (out[(t < lens_rows) & ~scored] == INF).all() and (out[t >= lens_rows] == -INF).all()


# -- select ----------------------------------------------------------------------------------


def write_reference(topk: torch.Tensor, counts: torch.Tensor, indptr: torch.Tensor, batch: Batch, kv_heads: int, rows: int, size: int) -> torch.Tensor:
    out = torch.full((size,), -1, dtype=torch.int32)
    for r in range(rows):
        b, g = divmod(r, kv_heads)
        for j in range(int(counts[r])):
            slot = int(batch.req_to_token[batch.pool[b], topk[r, j]])
            out[int(indptr[r]) + j] = slot * kv_heads + g
    return out


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_write_selected(index_dtype: torch.dtype) -> None:
    kv_heads, kmax = 2, 40
    batch = Batch([60, 1, 35], kv_heads, size=16, max_ctx=64, seed=9, pool_rows=[3, 0, 1])
    rows = 3 * kv_heads
    counts = torch.tensor([40, 0, 1, 1, 35, 20, 9, 9], dtype=torch.int32)  # rows_cap = 8 > rows
    indptr = torch.zeros(9, dtype=torch.int32)
    indptr[1:] = counts.cumsum(0)
    topk = torch.stack([torch.randperm(60, generator=torch.Generator().manual_seed(r))[:kmax] for r in range(8)])
    topk[2:4] = 0  # the padded request sees only token 0
    topk[4:6] = topk[4:6] % 35
    out = torch.full((int(indptr[-1]) + 5,), -1, dtype=torch.int32, device=DEVICE)
    write_selected(
        topk.to(index_dtype).to(DEVICE), counts.to(DEVICE), indptr.to(DEVICE), batch.req_to_token.to(DEVICE),
        batch.pool.to(DEVICE), kv_heads, out, rows, block=16,
    )
    expected = write_reference(topk, counts, indptr, batch, kv_heads, rows, out.numel())
    assert torch.equal(out.cpu(), expected)


def topk_reference(scores: torch.Tensor, k: int) -> list[int]:
    """The ``k`` largest, ties toward the lower column (a stable descending sort)."""
    return sorted(torch.sort(scores, descending=True, stable=True).indices[:k].tolist())


def tricky_scores(rows: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, L, generator=g)
    s[1] = torch.randint(0, 4, (L,), generator=g).float()  # massive ties
    s[2, : L // 3] = INF
    s[2, L // 3 :] = -INF
    s[3] = -torch.rand(L, generator=g) * 1e-30  # tiny negatives, subnormals and zeros
    s[3, ::7] = 0.0
    s[3, ::11] = -0.0
    s[4, ::3] = -INF
    s[4, 1::5] = INF
    s[5] = torch.randn(L, generator=g) * 1e30
    return s


@pytest.mark.parametrize("split", [False, True])
def test_topk_rows_selects_the_largest(split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    L, kmax = 700, 300
    scores = tricky_scores(8, L, seed=10)
    counts = torch.tensor([300, 250, 233, 100, 299, 1, 0, 300], dtype=torch.int32)
    out = torch.full((9, kmax), -1, dtype=torch.int32, device=DEVICE)  # rows_cap 9 > rows 8
    workspace = None
    if split:  # several programs per row even at this size
        monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", 64)
        assert select.topk_splits(8, L) == 8
        workspace = topk_workspace(9, DEVICE)
    topk_rows(scores.to(DEVICE), counts.to(DEVICE), 8, out, workspace=workspace, block=64)
    out = out.cpu()
    for r in range(8):
        k = int(counts[r])
        assert sorted(out[r, :k].tolist()) == topk_reference(scores[r], k), r
        assert (out[r, k:] == -1).all()
    assert (out[8] == -1).all()


def resolving_scores(L: int, k: int, seed: int) -> torch.Tensor:
    """Rows whose ``k`` largest sit alone in the bin of radix pass 0, of pass 1, neither (random:
    usually pass 2) and never (four distinct values: every pass's bin holds more ties, until pass
    2's holds one value only)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.empty(4, L)
    s[0] = torch.rand(L, generator=g)  # top byte 0x3E or 0x3F
    s[0, torch.randperm(L, generator=g)[:k]] = 512 + 400 * torch.rand(k, generator=g)  # 0x44
    s[1] = 600 + 100 * torch.rand(L, generator=g)  # exponent 137: pass-1 digits 21 to 40
    s[1, torch.randperm(L, generator=g)[:k]] = 1000 + 3 * torch.rand(k, generator=g)  # pass-1 digit 122
    s[2] = torch.randn(L, generator=g)
    s[3] = torch.randint(0, 4, (L,), generator=g).float()
    return s


def test_rows_resolved_early_skip_their_later_passes_and_pick_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row whose chosen bin holds exactly the keys still to take needs no more passes: the
    split top-K records it in each split's state and takes ``key ≥ prefix``; the picks are the
    exact top-K either way (and the single-program kernel's, which stops the same way)."""
    L, k = 700, 100
    scores = resolving_scores(L, k, seed=21)
    counts = torch.full((4,), k, dtype=torch.int32)
    monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", 64)
    splits = select.topk_splits(4, L)
    assert splits > 1
    workspace = topk_workspace(4, DEVICE)
    for ws in (workspace, None):
        out = torch.full((4, k), -1, dtype=torch.int32, device=DEVICE)
        topk_rows(scores.to(DEVICE), counts.to(DEVICE), 4, out, workspace=ws, block=64)
        for r in range(4):
            assert out[r].tolist() == topk_reference(scores[r], k), (r, ws is None)  # ascending columns
    states = 4 * select.MAX_SPLITS * 256
    state = workspace.cpu().view(4, select.ROW_INTS)[:, states : states + select.MAX_SPLITS * select.STATE_INTS]
    state = state.view(4, select.MAX_SPLITS, select.STATE_INTS)
    resolved = state[:, :splits, 3]
    assert (resolved[0] == 1).all() and (resolved[1] == 1).all(), "resolved at pass 0 and at pass 1"
    # the prefix is kept in unsigned key order (sign bit flipped): pass 0's byte 0x44, then zeros
    assert state[0, :splits, 0].unique().tolist() == [(0xC4 << 24) - (1 << 32)], "no digit of a later pass"
    # four values: pass 2's bin holds only 3.0, whose ties straddle the k-th; its exact key is the threshold
    threes = int((scores[3] == 3.0).sum())
    assert threes > k and (resolved[3] == 1).all(), "a bin of one value is resolved at pass 2"
    three_key = 0x40400000 - (1 << 31)  # 3.0's bits with the sign bit flipped, as an int32
    assert state[3, :splits, 0].unique().tolist() == [three_key] and (state[3, :splits, 4] == threes).all()


def test_rows_of_lookup_table_entries_resolve_at_pass_2_and_pick_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode scores are lookup-table entries: tokens sharing a code tie exactly, so the ``k``-th
    largest usually sits inside a group of ties and no bin ever holds just the keys to take.
    Pass 2's bin ranges see that the chosen bin is one value: those rows skip pass 3 and still
    pick the exact top-K, ties toward the lower columns."""
    rows, L, k = 8, 1500, 90
    g = torch.Generator().manual_seed(33)
    table = torch.randn(rows, 64, generator=g) * 3
    scores = torch.gather(table, 1, torch.randint(0, 64, (rows, L), generator=g))  # ~23 tokens a value
    counts = torch.full((rows,), k, dtype=torch.int32)
    monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", 64)
    splits = select.topk_splits(rows, L)
    assert splits > 1
    workspace = topk_workspace(rows, DEVICE)
    out = torch.full((rows, k), -1, dtype=torch.int32, device=DEVICE)
    topk_rows(scores.to(DEVICE), counts.to(DEVICE), rows, out, workspace=workspace, block=64)
    for r in range(rows):
        assert out[r].tolist() == topk_reference(scores[r], k), r
    states = 4 * select.MAX_SPLITS * 256
    state = workspace.cpu().view(rows, select.ROW_INTS)[:, states : states + select.MAX_SPLITS * select.STATE_INTS]
    resolved = state.view(rows, select.MAX_SPLITS, select.STATE_INTS)[:, :splits, 3]
    assert (resolved == resolved[:, :1]).all(), "every split of a row agrees"
    straddling = [r for r in range(rows) if (scores[r] == scores[r].sort(descending=True).values[k - 1]).sum() > 1]
    assert straddling and all(bool(resolved[r, 0]) for r in straddling), "ties at the k-th: resolved by one value"


@pytest.mark.parametrize("first_pass_done", [False, True])
def test_fused_topk_picks_what_the_launch_per_pass_picks(first_pass_done: bool) -> None:
    """The fused top-K (every pass and the compaction in one launch) against the launch per pass,
    on one split a row (the interpreter runs programs one after another: a row's splits cannot
    meet at a barrier here; the GPU tests run many), layer after layer on one workspace: its
    barrier counter and pass-0 counts are zero after each."""
    rows, L, kmax = 8, 700, 300
    counts = torch.tensor([300, 250, 233, 100, 299, 1, 0, 300], dtype=torch.int32, device=DEVICE)
    lens = torch.tensor([700, 650, 700, 1], device=DEVICE)  # two kv heads a request
    assert select.topk_splits(rows, L) == 1
    workspace = topk_workspace(rows, DEVICE)
    for layer in range(3):
        scores = tricky_scores(rows, L, seed=50 + layer).to(DEVICE)
        picks = []
        for fused in (True, False):
            if first_pass_done:  # what the score kernel counts: pass 0's digits over each length
                keys = scores.view(torch.int32)
                keys = torch.where(scores == 0, 0, keys)
                top = ((keys ^ ((keys >> 31) & 0x7FFFFFFF)) >> 24).add(128) & 0xFF
                for r in range(rows):
                    n = int(lens[r // 2])
                    workspace.view(rows, -1)[r, :256] = torch.bincount(top[r, :n], minlength=256).int()
            out = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
            topk_rows(scores, counts, rows, out, workspace=workspace, block=64, seq_lens=lens, num_kv_heads=2,
                      first_pass_done=first_pass_done, fused=fused)
            picks.append(out.cpu())
            ws = workspace.view(rows, select.ROW_INTS).cpu()
            assert not ws[:, : select.MAX_SPLITS * 256].any(), "pass-0 counts cleared"
            assert not ws[:, -select.BARRIER_INTS :].any(), "barrier counters back at zero"
        assert torch.equal(picks[0], picks[1]), layer
        for r in range(rows):
            n, k = int(lens[r // 2]), min(int(counts[r]), int(lens[r // 2]))
            assert picks[0][r, :k].tolist() == topk_reference(scores[r, :n].cpu(), k), (layer, r)


def test_fused_topk_is_for_small_grids_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its barriers hold only while every program of a row is resident: never in the interpreter,
    never past one program an SM, off at 0."""
    cpu = torch.empty(1)
    assert not select.fused_topk_fits(8, 8, cpu)
    if torch.cuda.is_available():
        gpu = torch.empty(1, device="cuda")
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        assert select.fused_topk_fits(sms // 8, 8, gpu) and not select.fused_topk_fits(sms, 8, gpu)
        monkeypatch.setattr(select, "FUSED_PROGRAMS_PER_SM", 0)
        assert not select.fused_topk_fits(1, 1, gpu)


def test_topk_rows_whole_row() -> None:
    """``counts = L``: every column, and counts above ``L`` or ``kmax`` are clamped."""
    L = 130
    scores = tricky_scores(6, L, seed=11)
    counts = torch.tensor([L, L, L, 500, L, L], dtype=torch.int32)
    out = torch.full((6, L), -1, dtype=torch.int32, device=DEVICE)
    topk_rows(scores.to(DEVICE), counts.to(DEVICE), 6, out, block=64)
    for r in range(6):
        assert sorted(out[r].tolist()) == list(range(L))


def run_select(batch: Batch, scores: torch.Tensor, counts: torch.Tensor, kv_heads: int, kmax: int, split: bool,
               monkeypatch: pytest.MonkeyPatch, seq_lens: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``select_and_write`` on one or several programs per row. → (picks, indices, indptr) on CPU"""
    rows, L = scores.shape
    indptr = torch.zeros(rows + 1, dtype=torch.int32)
    indptr[1:] = counts.cumsum(0)
    scratch = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    out = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
    workspace = None
    if split:  # several programs per row even at this size
        monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", 32)
        assert select.topk_splits(rows, L) > 1
        workspace = topk_workspace(rows, DEVICE)
    select_and_write(
        scores.to(DEVICE), counts.to(DEVICE), indptr.to(DEVICE), batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE),
        kv_heads, rows, scratch, out, workspace=workspace, block=32,
        seq_lens=None if seq_lens is None else torch.tensor(seq_lens).to(DEVICE),
    )
    return scratch.cpu(), out.cpu(), indptr


@pytest.mark.parametrize("split", [False, True])
def test_select_and_write_is_topk_then_write(split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    kv_heads, L, kmax = 2, 200, 64
    batch = Batch([200, 150, 1], kv_heads, size=16, max_ctx=L, seed=12, pool_rows=[1, 2, 0])
    rows = 3 * kv_heads
    scores = tricky_scores(rows, L, seed=13)
    scores[2:4, 150:] = -INF
    counts = torch.tensor([64, 60, 30, 64, 1, 0], dtype=torch.int32)
    scratch, out, indptr = run_select(batch, scores, counts, kv_heads, kmax, split, monkeypatch)
    for r in range(rows):
        k = int(counts[r])
        assert sorted(scratch[r, :k].tolist()) == topk_reference(scores[r], k)
    assert torch.equal(out, write_reference(scratch, counts, indptr, batch, kv_heads, rows, out.numel()))


@pytest.mark.parametrize("split", [False, True])
def test_select_ignores_columns_past_each_requests_length(split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``seq_lens`` the picks come only from ``[0, len)``: even +inf garbage past the length
    (stale scores of a longer earlier request) is never read."""
    kv_heads, L, kmax = 2, 300, 64
    lens = [300, 90, 1, 200]
    batch = Batch(lens, kv_heads, size=16, max_ctx=L, seed=14, pool_rows=[1, 2, 0, 3])
    rows = len(lens) * kv_heads
    scores = tricky_scores(rows, L, seed=15)
    for r in range(rows):
        scores[r, lens[r // kv_heads]:] = INF
    counts = torch.tensor([64, 50, 64, 37, 1, 1, 64, 5], dtype=torch.int32)
    scratch, out, indptr = run_select(batch, scores, counts, kv_heads, kmax, split, monkeypatch, seq_lens=lens)
    for r in range(rows):
        n, k = lens[r // kv_heads], int(counts[r])
        assert sorted(scratch[r, :k].tolist()) == topk_reference(scores[r, :n], k), r
    assert torch.equal(out, write_reference(scratch, counts, indptr, batch, kv_heads, rows, out.numel()))


def test_score_unpadded_then_topk_over_each_length() -> None:
    """The decode path: ``pad=False`` scoring leaves columns past a length alone (stale here),
    and the top-K given the lengths never reads them."""
    kv_heads, size, L, sinks, window, kmax = 2, 64, 300, 4, 8, 48
    lens = [300, 77, 1, 250]
    batch = Batch(lens, kv_heads, size, max_ctx=L, seed=16)
    rows = len(lens) * kv_heads
    lut = torch.randint(0, 6, (len(lens), 2, 2 * kv_heads, size), generator=torch.Generator().manual_seed(17)).float()
    edges = [window, 64]
    expected = score_reference(lut, batch, edges, sinks, window, L, "max")  # small integers: many ties
    counts = torch.tensor([48, 30, 48, 48, 1, 1, 40, 20], dtype=torch.int32)
    scores = torch.full((rows, L), INF, device=DEVICE)  # stale scores that would win any top-K
    lens_dev = batch.lens.to(DEVICE)
    score_tokens(fold(lut, kv_heads, "max").to(DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE),
                 batch.pool.to(DEVICE), lens_dev, torch.tensor(edges, dtype=torch.int32, device=DEVICE), sinks, window, scores,
                 block=32, pad=False)
    out = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    topk_rows(scores, counts.to(DEVICE), rows, out, workspace=topk_workspace(rows, DEVICE), block=32,
              seq_lens=lens_dev, num_kv_heads=kv_heads)
    scores, out = scores.cpu(), out.cpu()
    for r in range(rows):
        n, k = lens[r // kv_heads], int(counts[r])
        torch.testing.assert_close(scores[r, :n], expected[r, :n])
        assert (scores[r, n:] == INF).all()
        assert sorted(out[r, :k].tolist()) == topk_reference(expected[r, :n], k), r


@pytest.mark.parametrize("L, min_split", [(300, None), (1536, 64)])  # one split; four 512-column splits
@pytest.mark.parametrize("heads", [1, 2])  # the counts summed per run, or added per block
def test_score_counts_the_topk_first_pass(L: int, min_split: int | None, heads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The score kernel counting pass 0 (``topk_workspace``) and the top-K skipping it pick what
    the top-K picks alone, layer after layer: the compaction clears the counts it read, so the
    workspace's pass-0 histograms are zero again after each layer."""
    monkeypatch.setattr(score, "HEADS_PER_PROGRAM", heads)
    if min_split is not None:
        monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", min_split)
    kv_heads, size, sinks, window, kmax = 2, 64, 4, 8, 96
    lens = [L, 77, 1, L - 200]
    rows = len(lens) * kv_heads
    splits = select.topk_splits(rows, L)
    assert splits == (1 if min_split is None else 16)
    edges = [window, 64, 512]
    counts = torch.tensor([96, 30, 96, 96, 1, 1, 40, 20], dtype=torch.int32, device=DEVICE)
    lens_dev = torch.tensor(lens, device=DEVICE)
    workspace = topk_workspace(rows, DEVICE)
    for layer in range(3):
        batch = Batch(lens, kv_heads, size, max_ctx=L, seed=30 + layer)
        lut = torch.randint(0, 5, (len(lens), len(edges), 2 * kv_heads, size), generator=torch.Generator().manual_seed(40 + layer)).float()
        args = (fold(lut, kv_heads, "max").to(DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE),
                batch.pool.to(DEVICE), lens_dev, torch.tensor(edges, dtype=torch.int32, device=DEVICE), sinks, window)
        picks = []
        for fused in (True, False):
            scores = torch.full((rows, L), INF, device=DEVICE)
            score_tokens(*args, scores, block=128, pad=False, topk_workspace=workspace if fused else None)
            out = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
            topk_rows(scores, counts, rows, out, workspace=workspace, seq_lens=lens_dev, num_kv_heads=kv_heads,
                      first_pass_done=fused)
            picks.append(out.cpu())
            assert not workspace.view(rows, -1)[:, : select.MAX_SPLITS * 256].any(), "pass-0 counts cleared"
        assert torch.equal(picks[0], picks[1]), layer
        expected = score_reference(lut, batch, edges, sinks, window, L, "max")
        for r in range(rows):
            n = lens[r // kv_heads]
            k = min(int(counts[r]), n)  # a row shorter than its count keeps all of it
            assert sorted(picks[0][r, :k].tolist()) == topk_reference(expected[r, :n], k), (layer, r)


def test_first_pass_counting_needs_blocks_inside_a_split_and_the_lengths() -> None:
    batch = Batch([40], 1, 16, max_ctx=64, seed=1)
    args = (torch.zeros(1, 1, 1, 16, device=DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE),
            batch.pool.to(DEVICE), batch.lens.to(DEVICE), torch.tensor([8], dtype=torch.int32, device=DEVICE), 0, 8)
    with pytest.raises(AssertionError):
        score_tokens(*args, torch.empty(1, 64, device=DEVICE), block=384, topk_workspace=topk_workspace(1, DEVICE))
    with pytest.raises(AssertionError, match="per length"):
        topk_rows(torch.zeros(1, 64, device=DEVICE), torch.ones(1, dtype=torch.int32, device=DEVICE), 1,
                  torch.empty(1, 4, dtype=torch.int32, device=DEVICE), workspace=topk_workspace(1, DEVICE),
                  first_pass_done=True)


# -- serving-sized shapes on the GPU ---------------------------------------------------------


@pytest.mark.gpu
def test_topk_rows_large_matches_torch_topk() -> None:
    rows, L, kmax = 64, 131072, 4096
    g = torch.Generator(device="cuda").manual_seed(14)
    scores = torch.randn(rows, L, device="cuda", generator=g)
    scores[::4, :64] = INF
    scores[1::4, 100_000:] = -INF
    scores[2] = torch.randint(0, 100, (L,), device="cuda", generator=g).float()
    counts = torch.randint(0, kmax + 1, (rows,), device="cuda", generator=g, dtype=torch.int32)
    counts[0], counts[1] = kmax, 0
    expected = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kmax]
    for workspace in (None, topk_workspace(rows, "cuda")):
        out = torch.full((rows, kmax), -1, dtype=torch.int32, device="cuda")
        topk_rows(scores, counts, rows, out, workspace=workspace)
        for r in range(rows):
            k = int(counts[r])
            assert torch.equal(out[r, :k].sort().values.long(), expected[r, :k].sort().values), r


@pytest.mark.gpu
@pytest.mark.parametrize("rows, L", [(8, 16384), (8, 32768), (8, 131072)])  # 8, 16, 16 splits a row
def test_fused_topk_matches_the_launch_per_pass_at_serving_shapes(rows: int, L: int) -> None:
    """The fused top-K's splits meet at barriers: picks equal to the launch per pass (and to a
    stable sort), rows of lookup-table entries (ties straddling the k-th) and of distinct scores,
    replayed from a CUDA graph layer after layer with every counter back at zero."""
    g = torch.Generator(device="cuda").manual_seed(61)
    table = torch.randn(rows, 4096, device="cuda", generator=g)
    scores = torch.gather(table, 1, torch.randint(0, 4096, (rows, L), device="cuda", generator=g))
    scores[1::2] = torch.randn(rows // 2, L, device="cuda", generator=g)
    scores[:, :4] = INF
    lens = torch.full((rows // 8,), L, device="cuda")
    lens[-1] = L - 3000
    scores.view(rows // 8, 8, L)[-1, :, L - 3000 :] = INF  # past the last request's length: never read
    counts = torch.full((rows,), 1124, dtype=torch.int32, device="cuda")
    counts[3] = 1
    splits = select.topk_splits(rows, L)
    assert splits >= 8 and select.fused_topk_fits(rows, splits, scores)  # (every program resident)
    workspace = topk_workspace(rows, "cuda")
    picks = []
    for fused in (False, True):
        out = torch.full((rows, 1124), -1, dtype=torch.int32, device="cuda")
        topk_rows(scores, counts, rows, out, workspace=workspace, seq_lens=lens, num_kv_heads=8, fused=fused)
        picks.append(out)
    assert torch.equal(picks[0], picks[1])
    for r in range(rows):
        n = int(lens[r // 8])
        want = torch.sort(scores[r, :n], descending=True, stable=True).indices[: int(counts[r])].sort().values
        assert torch.equal(picks[1][r, : int(counts[r])].long(), want), r
    out = torch.full((rows, 1124), -1, dtype=torch.int32, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(4):  # four layers on one workspace
            topk_rows(scores, counts, rows, out, workspace=workspace, seq_lens=lens, num_kv_heads=8, fused=True)
    for _ in range(3):
        out.fill_(-1)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, picks[0])
        assert not workspace.view(rows, select.ROW_INTS)[:, -select.BARRIER_INTS :].any()


@pytest.mark.gpu
def test_encode_serving_shape() -> None:
    kv_heads, dim, size, n = 8, 128, 4096, 3000
    chol, cz = codebook(kv_heads, dim, size, seed=15)
    keys = torch.randn(n, kv_heads, dim, generator=torch.Generator().manual_seed(16)).bfloat16()
    proj, half_norm = encode_projection(chol.cuda(), cz.cuda())
    for workspace in (None, encode_workspace(n, kv_heads, size, "cuda")):
        codes = torch.zeros(n, kv_heads, dtype=torch.int16, device="cuda")
        encode_keys(keys.cuda(), proj, half_norm, torch.arange(n, device="cuda"), codes, workspace=workspace)
        check_codes(codes.cpu(), keys, chol, cz)


@pytest.mark.gpu
def test_kernels_capture_in_a_cuda_graph() -> None:
    """A decode step's kernels, split paths included, replay from a CUDA graph."""
    kv_heads, L, kmax, size = 2, 16384, 256, 512
    batch = Batch([16384, 12000], kv_heads, size, max_ctx=L, seed=17)
    lut = torch.randn(2, 2, kv_heads, size, device="cuda")
    codes, req_to_token, pool, lens = (t.cuda() for t in (batch.codes, batch.req_to_token, batch.pool, batch.lens))
    edges = torch.tensor([64, 1024], dtype=torch.int32, device="cuda")
    proj, half_norm = encode_projection(torch.eye(64, device="cuda")[None].repeat(kv_heads, 1, 1), torch.randn(kv_heads, size, 64, device="cuda"))
    new_keys = torch.randn(2, kv_heads, 64, device="cuda").bfloat16()
    new_loc = req_to_token[pool, lens - 1]
    encode_ws = encode_workspace(2, kv_heads, size, "cuda")
    scores = torch.empty(4, L, device="cuda")
    counts = torch.full((4,), kmax, dtype=torch.int32, device="cuda")
    indptr = torch.arange(5, dtype=torch.int32, device="cuda") * kmax
    scratch = torch.empty(4, kmax, dtype=torch.int32, device="cuda")
    out = torch.empty(4 * kmax, dtype=torch.int32, device="cuda")
    topk_ws = topk_workspace(4, "cuda")
    assert select.topk_splits(4, L) > 1

    def step() -> None:
        encode_keys(new_keys, proj, half_norm, new_loc, codes, workspace=encode_ws)
        score_tokens(lut, codes, req_to_token, pool, lens, edges, 4, 64, scores)
        select_and_write(scores, counts, indptr, req_to_token, pool, kv_heads, 4, scratch, out, workspace=topk_ws)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    expected, expected_codes = out.clone(), codes.clone()
    out.zero_()
    codes[new_loc] = 0
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(codes, expected_codes) and torch.equal(out, expected)
    assert math.isinf(float(scores[0, 0]))


@pytest.mark.gpu
@pytest.mark.parametrize("heads", [1, 8])  # kv heads a score program covers
def test_table_score_and_select_pick_the_exact_topk_at_serving_shape(heads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama-3.1-8B shape, 32K contexts: the group-reduced table (queries rotated in the kernel),
    the scores and the top-K of the decode path against plain torch on inputs whose sums are exact
    (small integers, quarter-turn rotations), so every entry is bit-comparable and the many ties
    test which columns win them (the lowest); the top-K is checked with its first pass counted
    by the score kernel (as served) and on its own."""
    from a2ats_sglang.kernels.lut import folded_lookup_table

    monkeypatch.setattr(score, "HEADS_PER_PROGRAM", heads)
    kv_heads, group, dim, size, sinks, window = 8, 4, 128, 4096, 4, 64
    edges = [window, 128, 256, 512, 1024, 2048, 4096, 8192]
    lens = [32768, 20000, 5000, 1]
    bs, nb, L = len(lens), len(edges), max(lens)
    g = torch.Generator(device="cuda").manual_seed(21)
    decoded = torch.randint(-3, 4, (kv_heads, size, dim), device="cuda", generator=g).bfloat16()
    q_post = torch.randint(-3, 4, (bs, kv_heads * group, dim), device="cuda", generator=g).bfloat16()
    turns = torch.randint(0, 4, (bs, nb, dim // 2), device="cuda", generator=g)  # angles of k·90°: exact cos/sin
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device="cuda")[turns]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device="cuda")[turns]
    lo, hi = q_post.double()[:, None, :, : dim // 2], q_post.double()[:, None, :, dim // 2 :]  # neox halves
    c, s = cos.double()[:, :, None], sin.double()[:, :, None]
    q_w = torch.cat([lo * c - hi * s, hi * c + lo * s], -1)  # [bs, nb, Hq, d]
    full = torch.einsum("hcd,jhgd->jhgc", decoded.double(), q_w.reshape(bs * nb, kv_heads, group, dim))
    want_table = full.amax(2).float()  # [bs·nb, Hkv, C], exact
    table = folded_lookup_table(decoded, q_post, cos, sin, group, True, 1.0, "max")
    assert torch.equal(table, want_table)

    slots = bs * L + 1
    codes = torch.randint(0, size, (slots, kv_heads), device="cuda", generator=g, dtype=torch.int32).to(torch.int16)  # codewords of the table
    req_to_token = torch.zeros(bs + 1, L, dtype=torch.int32, device="cuda")
    req_to_token[1:] = (torch.randperm(slots - 1, device="cuda", generator=g)[: bs * L] + 1).view(bs, L).int()
    pool = torch.arange(1, bs + 1, device="cuda")
    seq_lens = torch.tensor(lens, device="cuda")
    edges_t = torch.tensor(edges, dtype=torch.int32, device="cuda")
    rows = bs * kv_heads
    counts = torch.tensor([min(n, 1056 + sinks + window) for n in lens], dtype=torch.int32, device="cuda")
    counts = counts.repeat_interleave(kv_heads)
    indptr = torch.zeros(rows + 1, dtype=torch.int32, device="cuda")
    indptr[1:] = counts.cumsum(0)
    results = {}
    for fused in (True, False):
        scores = torch.empty(rows, L, device="cuda")
        workspace = topk_workspace(rows, "cuda")
        score_tokens(table.view(bs, nb, kv_heads, size), codes, req_to_token, pool, seq_lens, edges_t, sinks, window,
                     scores, pad=False, topk_workspace=workspace if fused else None)
        picks = torch.full((rows, int(counts.max())), -1, dtype=torch.int32, device="cuda")
        indices = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device="cuda")
        select_and_write(scores, counts, indptr, req_to_token, pool, kv_heads, rows, picks, indices,
                         workspace=workspace, seq_lens=seq_lens, first_pass_done=fused)
        results[fused] = scores, picks, indices

    t = torch.arange(L, device="cuda")
    for b, n in enumerate(lens):
        dist = n - 1 - t[:n]
        bucket = (dist[:, None] >= edges_t[None, 1:]).sum(1)
        slot = req_to_token[b + 1, :n].long()
        for h in range(kv_heads):
            r = b * kv_heads + h
            code = codes[slot, h].long() & 0xFFFF
            want = want_table[b * nb + bucket, h, code]
            want[(t[:n] < sinks) | (t[:n] >= n - window)] = INF
            k = int(counts[r])
            top = torch.sort(want, descending=True, stable=True).indices[:k].sort().values
            for fused, (scores, picks, indices) in results.items():
                assert torch.equal(scores[r, :n], want), (r, fused)
                assert torch.equal(picks[r, :k].long(), top), (r, fused)  # ascending columns, ties to the lowest
                assert torch.equal(indices[indptr[r] : indptr[r] + k].long(), slot[top] * kv_heads + h), (r, fused)

def test_split_counts_and_stages_at_serving_shapes() -> None:
    """The measured choices (kernel-tuning-h200-9c6c192.json): 16 splits a row for a batch of one
    at 32K (8 rows), at most 4 from 64 rows on, two pipeline stages from 256 rows."""
    assert [select.topk_splits(rows, 32768) for rows in (8, 16, 64, 128, 256)] == [16, 16, 4, 4, 4]
    assert select.topk_splits(8, 131072) == 16 and select.topk_splits(512, 32768) == 2
    assert [select.select_stages(rows) for rows in (8, 64, 255, 256, 512)] == [1, 1, 1, 2, 2]
