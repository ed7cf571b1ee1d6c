"""Triton kernels against their pure-torch references (on CPU through the Triton interpreter).

Small shapes keep the interpreter fast; the ``gpu`` tests add serving-sized shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from a2ats_sglang.kernels import score
from a2ats_sglang.kernels.encode import encode_keys, encode_projection, encode_workspace
from a2ats_sglang.kernels.score import score_tokens

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


# -- serving-sized shapes on the GPU ---------------------------------------------------------


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
