"""The on-chip select (kernels/onchip.py) against the split radix select and the references:
the same picks, in the same order, with the same KV-pool indices; rows it cannot hold left to
the split select, through the decoder's lengths. On CPU through the Triton interpreter, with
the blocks shrunk; the ``gpu`` test runs the serving shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.kernels import onchip
from a2ats_sglang.kernels.onchip import longest_row, onchip_runs, onchip_select
from a2ats_sglang.kernels.score import score_tokens
from a2ats_sglang.kernels.select import select_and_write, topk_workspace
from a2ats_sglang.method.codebook import Codebook, ModelIdentity
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.wrope import DistanceBuckets
from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers, SparseDecoder
from test_kernels import Batch, fold, score_reference, topk_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = Path(__file__).parent / "configs"


def indptr_of(counts: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(counts.numel() + 1, dtype=torch.int32)
    out[1:] = torch.cumsum(counts, 0)
    return out


def split_select(args: tuple, counts: torch.Tensor, indptr: torch.Tensor, batch: Batch, L: int, kmax: int,
                 kv_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Today's serving pair: the score kernel counting pass 0, then the split select."""
    rows = counts.numel()
    ws = topk_workspace(rows, DEVICE)
    scores = torch.empty(rows, L, device=DEVICE)
    score_tokens(*args, scores, pad=False, topk_workspace=ws)
    picks = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    indices = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
    select_and_write(scores, counts.to(DEVICE), indptr.to(DEVICE), batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE),
                     kv_heads, rows, picks, indices, ws, seq_lens=batch.lens.to(DEVICE), first_pass_done=True)
    return picks.cpu(), indices.cpu()


@pytest.mark.parametrize("row, tail, L, lens", [
    (128, 32, 200, [200, 160, 129, 77, 1, 128]),  # a tail block; rows over 160 left alone
    (256, 0, 250, [250, 77, 1, 200]),  # every row in the main block
    (64, 64, 120, [120, 65, 64, 63]),  # rows ending just inside, at and past the main block
])
@pytest.mark.parametrize("narrow, candidates", [(0, 0), (8, 256), (20, 256), (20, 4)])  # 4: most rows overflow
@pytest.mark.parametrize("values", ["thirds", "normal"])  # ties at every threshold, or nearly none
def test_onchip_picks_what_the_split_select_picks(row: int, tail: int, L: int, lens: list[int], narrow: int,
                                                  candidates: int, values: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onchip, "ROW", row)
    monkeypatch.setattr(onchip, "TAIL", tail)
    monkeypatch.setattr(onchip, "NARROW_ROUNDS", narrow)
    monkeypatch.setattr(onchip, "CANDIDATES", candidates or 16)
    kv_heads, size, sinks, window, kmax = 2, 64, 4, 8, 48
    batch = Batch(lens, kv_heads, size, max_ctx=L, seed=row + L)
    rows = len(lens) * kv_heads
    g = torch.Generator().manual_seed(L)
    shape = (len(lens), 3, 2 * kv_heads, size)
    # thirds: few values, each with every mantissa bit in play (the last rounds decide something)
    lut = torch.randint(0, 6, shape, generator=g) / 3 if values == "thirds" else torch.randn(shape, generator=g)
    edges = [window, 32, 96]  # small integers: ties straddle every threshold
    counts = torch.tensor([48, 30, 48, 1, 40, 20, 48, 48, 33, 7, 2, 48][:rows], dtype=torch.int32)
    indptr = indptr_of(counts)
    args = (fold(lut, kv_heads, "max").to(DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE),
            batch.pool.to(DEVICE), batch.lens.to(DEVICE), torch.tensor(edges, dtype=torch.int32, device=DEVICE),
            sinks, window)
    picks = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    indices = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
    scratch = torch.full((onchip.onchip_scratch_numel(rows) + 1,), 7, dtype=torch.int32, device=DEVICE)
    onchip_select(*args, counts.to(DEVICE), L, picks, (indptr.to(DEVICE), indices), scratch[:-1])
    assert int(scratch[-1]) == 7, "the candidate lists stay inside their rows"
    picks, indices = picks.cpu(), indices.cpu()
    split_picks, split_indices = split_select(args, counts, indptr, batch, L, kmax, kv_heads)
    expected = score_reference(lut, batch, edges, sinks, window, L, "max")
    held = 0
    for r in range(rows):
        n = lens[r // kv_heads]
        k, a = min(int(counts[r]), n), int(indptr[r])
        if n > longest_row():
            assert (picks[r] == -1).all() and (indices[a : a + k] == -1).all(), r  # the split select's
            continue
        held += 1
        assert picks[r, :k].tolist() == sorted(topk_reference(expected[r, :n], k)), r
        assert torch.equal(picks[r, :k], split_picks[r, :k]), r  # the same order: ascending columns
        assert torch.equal(indices[a : a + k], split_indices[a : a + k]), r
        assert (picks[r, k:] == -1).all(), r
    assert held >= rows // 2


def test_ties_across_the_two_blocks_go_to_the_lowest_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every score equal: the picks are the first k columns, past the main block into the tail."""
    monkeypatch.setattr(onchip, "ROW", 64)
    monkeypatch.setattr(onchip, "TAIL", 32)
    lens, size, L = [90, 96], 16, 96
    batch = Batch(lens, 1, size, max_ctx=L, seed=2)
    counts = torch.tensor([70, 96], dtype=torch.int32)
    picks = torch.full((2, 96), -1, dtype=torch.int32, device=DEVICE)
    lut = torch.full((2, 1, 1, size), 0.5, device=DEVICE)
    onchip_select(lut, batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE),
                  batch.lens.to(DEVICE), torch.tensor([0], dtype=torch.int32, device=DEVICE), 0, 0,
                  counts.to(DEVICE), L, picks)
    picks = picks.cpu()
    assert picks[0, :70].tolist() == list(range(70)) and (picks[0, 70:] == -1).all()
    assert picks[1].tolist() == list(range(96))  # k = n: the whole row


def test_narrowing_needs_the_candidate_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onchip, "NARROW_ROUNDS", 16)
    batch = Batch([40], 1, 16, max_ctx=64, seed=1)
    with pytest.raises(AssertionError, match="onchip_scratch"):
        onchip_select(torch.zeros(1, 1, 1, 16, device=DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE),
                      batch.pool.to(DEVICE), batch.lens.to(DEVICE), torch.tensor([8], dtype=torch.int32, device=DEVICE),
                      0, 8, torch.ones(1, dtype=torch.int32, device=DEVICE), 64,
                      torch.empty(1, 4, dtype=torch.int32, device=DEVICE))


def test_onchip_runs_only_from_its_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onchip, "FROM_ROWS", None)
    assert not onchip_runs(10**6)
    monkeypatch.setattr(onchip, "FROM_ROWS", 64)
    assert not onchip_runs(63) and onchip_runs(64)


def decoder_case(context: int, lens: list[int]) -> tuple:
    """A one-layer SmolLM2-shaped decoder with every request's keys encoded."""
    config = json.loads((CONFIGS / "smollm2-135m.json").read_text())
    config["num_hidden_layers"] = 1
    book = Codebook.random(ModelIdentity.from_hf_config(config), 64)
    m = book.meta.model
    slots = sum(lens) + 16
    dec = SparseDecoder(book, slots, context, Budget(2, 8, 0.1, 0, None), DistanceBuckets.log2(8, context), "max", DEVICE)
    g = torch.Generator().manual_seed(1)
    rope = RopeSpec.from_dict(m.rope)
    req_to_token = torch.zeros(len(lens) + 1, context, dtype=torch.int32)
    perm = torch.randperm(slots - 1, generator=g) + 1
    start = 0
    for r, n in enumerate(lens):
        loc = perm[start : start + n]
        start += n
        req_to_token[r + 1, :n] = loc.int()
        k = rope.apply(torch.randn(n, m.num_kv_heads, m.head_dim, generator=g), torch.arange(n)).bfloat16()
        dec.encode(0, k.to(DEVICE), loc.to(DEVICE), dec.rotary.key_tables(torch.arange(n, device=DEVICE)))
    q = torch.randn(len(lens), m.num_attention_heads, m.head_dim, generator=g).bfloat16().to(DEVICE)
    return dec, m, req_to_token.to(DEVICE), q


@pytest.mark.parametrize("write", [True, False])  # attention's indices, or the picks a store resolves
def test_decoder_picks_the_same_with_the_onchip_select(write: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SparseDecoder.pick`` with the on-chip select on: rows it holds on chip, the longer one
    by the split select (its length left in ``split_lens``, the others zeroed), and every row's
    picks and indices as with the split select alone."""
    monkeypatch.setattr(onchip, "ROW", 128)
    monkeypatch.setattr(onchip, "TAIL", 64)
    lens, context = [260, 150, 190], 272  # 260 > 192: the split select's
    dec, m, req_to_token, q = decoder_case(context, lens)
    rpi = torch.arange(1, len(lens) + 1, device=DEVICE)
    seq_lens = torch.tensor(lens, device=DEVICE)
    tables = dec.step_tables(seq_lens - 1, req_to_token, rpi)
    lut = dec.lookup_table(0, q, tables.queries)
    out = {}
    for from_rows in (None, 1):
        monkeypatch.setattr(onchip, "FROM_ROWS", from_rows)
        buffers = SparseDecodeBuffers(len(lens), m.num_kv_heads, context, dec.width, 64, dec.num_buckets, DEVICE)
        buffers.indices.fill_(-1)
        buffers.set_counts(seq_lens, dec.budget)
        assert buffers.split_lens.tolist() == [260, 0, 0]
        dec.pick(0, lut, req_to_token, rpi, seq_lens, buffers, write=write)
        used = int(buffers.indptr[len(lens) * m.num_kv_heads])
        out[from_rows] = (buffers.picks.cpu(), buffers.indices[:used].cpu())
    assert torch.equal(out[None][0], out[1][0])
    assert torch.equal(out[None][1], out[1][1])
    assert bool((out[1][1] >= 0).all()) == write and bool((out[1][1] == -1).all()) != write  # all written, or none


@pytest.mark.gpu
@pytest.mark.parametrize("rows, L, n", [(256, 32832, 32768), (64, 131072, 33792)])  # serving shapes; a tail
@pytest.mark.parametrize("narrow", [0, 16])
def test_onchip_matches_the_split_select_at_serving_shapes(rows: int, L: int, n: int, narrow: int,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """32K rows at the real blocks (16 warps, 32,768 + 4,096 columns), ties from a 4,096-entry table."""
    monkeypatch.setattr(onchip, "NARROW_ROUNDS", narrow)
    kv_heads, size, kmax = 8, 4096, 4096
    lens = [n - 37 * i for i in range(rows // kv_heads)]
    batch = Batch(lens, kv_heads, size, max_ctx=L, seed=rows)
    lut = torch.randn(len(lens), 9, kv_heads, size, device=DEVICE).round(decimals=1)  # many ties
    edges = torch.tensor([64, 2048, 4096, 6144, 8192, 12288, 16384, 24576, 32768], dtype=torch.int32, device=DEVICE)
    counts = torch.full((rows,), 1056 + 72, dtype=torch.int32)
    indptr = indptr_of(counts)
    args = (lut, batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE), batch.lens.to(DEVICE),
            edges, 8, 64)
    picks = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    indices = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
    scratch = torch.empty(onchip.onchip_scratch_numel(rows), dtype=torch.int32, device=DEVICE)
    onchip_select(*args, counts.to(DEVICE), L, picks, (indptr.to(DEVICE), indices), scratch)
    split_picks, split_indices = split_select(args, counts, indptr, batch, L, kmax, kv_heads)
    assert torch.equal(picks.cpu(), split_picks)
    assert torch.equal(indices.cpu(), split_indices)
