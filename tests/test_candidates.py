"""Top-K among candidates (kernels/candidates.py), in Triton's interpreter on the CPU: the score
kernel appends exactly the columns at or above each row's threshold; rows with enough candidates
pick the exact top-K (ties toward the lower column, ascending), the others are flagged and the
split select picks them; any threshold, stale or absurd, gives the same picks; the next
threshold is the right rank of the candidates."""

from __future__ import annotations

import pytest
import torch
from test_kernels import DEVICE, INF, Batch, fold, score_reference, topk_reference

from a2ats_sglang.kernels import select
from a2ats_sglang.kernels.candidates import MAX_CAP, candidate_capacity, candidate_topk
from a2ats_sglang.kernels.score import score_tokens
from a2ats_sglang.kernels.select import select_and_write, topk_workspace

KV_HEADS, SIZE, L, SINKS, WINDOW = 2, 64, 300, 4, 8
LENS = [300, 77, 250, 190]
POOL = [3, 1, 2, 4]  # request slots, not batch order


def setup(seed: int) -> tuple[Batch, torch.Tensor, list[int], torch.Tensor]:
    batch = Batch(LENS, KV_HEADS, SIZE, max_ctx=L, seed=seed, pool_rows=POOL)
    g = torch.Generator().manual_seed(seed + 1)
    lut = torch.randint(0, 40, (len(LENS), 2, 2 * KV_HEADS, SIZE), generator=g).float() / 4  # ties, as codes make
    edges = [WINDOW, 64]
    return batch, lut, edges, score_reference(lut, batch, edges, SINKS, WINDOW, L, "max")


def score(batch: Batch, lut: torch.Tensor, edges: list[int], scores: torch.Tensor, thresh: torch.Tensor,
          cand: torch.Tensor, cand_n: torch.Tensor) -> None:
    score_tokens(fold(lut, KV_HEADS, "max").to(DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE),
                 batch.pool.to(DEVICE), batch.lens.to(DEVICE), torch.tensor(edges, dtype=torch.int32, device=DEVICE),
                 SINKS, WINDOW, scores, block=32, pad=False, candidates=(thresh, cand, cand_n))


def thresholds(values: list[float]) -> torch.Tensor:
    """One threshold per (request slot, kv head), slot 0 unused, in batch order of ``values``."""
    t = torch.full(((max(POOL) + 1) * KV_HEADS,), 1e30)
    for r, v in enumerate(values):
        t[POOL[r // KV_HEADS] * KV_HEADS + r % KV_HEADS] = v
    return t.to(DEVICE)


def test_the_score_kernel_appends_exactly_the_columns_at_or_above_the_threshold() -> None:
    batch, lut, edges, expected = setup(seed=30)
    rows, cap = len(LENS) * KV_HEADS, 256
    values = [2.0, 5.0, -INF, 9.0, 1e30, 3.5, 7.25, 0.0]
    thresh, cand = thresholds(values), torch.full((rows, cap), -1, dtype=torch.int32, device=DEVICE)
    cand_n = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    scores = torch.zeros(rows, L, device=DEVICE)
    score(batch, lut, edges, scores, thresh, cand, cand_n)
    cand, cand_n = cand.cpu(), cand_n.cpu()
    for r in range(rows):
        n = LENS[r // KV_HEADS]
        want = [t for t in range(n) if expected[r, t] >= values[r]]
        assert int(cand_n[r]) == len(want), r
        assert sorted(cand[r, : min(len(want), cap)].tolist()) == want[:cap] or len(want) > cap, r
        if len(want) <= cap:
            assert (cand[r, len(want):] == -1).all()
        else:  # overflow: the first CAP appended are kept, nothing past the row's capacity is written
            assert set(cand[r].tolist()) <= set(want)


def run(batch: Batch, lut: torch.Tensor, edges: list[int], counts: torch.Tensor, thresh: torch.Tensor, cap: int,
        split: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer of the decode path: score with candidates, pick among them, the split select for
    the rest. → picks, KV-pool indices, indptr, done flags (CPU)"""
    rows, kmax = counts.shape[0], int(counts.max())
    scores = torch.zeros(rows, L, device=DEVICE)
    cand = torch.zeros(rows, cap, dtype=torch.int32, device=DEVICE)
    cand_n = torch.zeros(rows, dtype=torch.int32, device=DEVICE)
    done = torch.full((rows,), 7, dtype=torch.int32, device=DEVICE)
    score(batch, lut, edges, scores, thresh, cand, cand_n)
    indptr = torch.zeros(rows + 1, dtype=torch.int32)
    indptr[1:] = counts.cumsum(0)
    picks = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    out = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
    lens, r2t, pool = batch.lens.to(DEVICE), batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE)
    candidate_topk(scores, counts.to(DEVICE), rows, picks, cand, cand_n, done, thresh, pool, KV_HEADS,
                   seq_lens=lens, write=(indptr.to(DEVICE), r2t, out))
    assert (cand_n == 0).all(), "the counts are zeroed for the next layer"
    select_and_write(scores, counts.to(DEVICE), indptr.to(DEVICE), r2t, pool, KV_HEADS, rows, picks, out,
                     topk_workspace(rows, DEVICE) if split else None, block=32, seq_lens=lens, done=done)
    return picks.cpu(), out.cpu(), indptr, done.cpu()


def check(batch: Batch, expected: torch.Tensor, counts: torch.Tensor, picks: torch.Tensor, out: torch.Tensor,
          indptr: torch.Tensor) -> None:
    for r in range(counts.shape[0]):
        n, k = LENS[r // KV_HEADS], int(counts[r])
        want = topk_reference(expected[r, :n], k)
        assert picks[r, :k].tolist() == want, r  # ascending columns, as the split select writes them
        slots = batch.req_to_token[POOL[r // KV_HEADS], want] * KV_HEADS + r % KV_HEADS
        assert out[indptr[r] : indptr[r + 1]].tolist() == slots.tolist(), r


@pytest.mark.parametrize("split", [False, True])
def test_any_threshold_picks_the_exact_topk(split: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thresholds that leave enough candidates, too few (1e30: only the protected tokens), too
    many for CAP (−inf) and the k-th score itself (its ties are candidates: enough)."""
    batch, lut, edges, expected = setup(seed=31)
    if split:
        monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", 32)
    counts = torch.tensor([40, 30, 40, 40, 12, 20, 33, 20], dtype=torch.int32)
    kth = [float(torch.sort(expected[r, : LENS[r // KV_HEADS]], descending=True).values[int(counts[r]) - 1])
           for r in range(8)]
    values = [kth[0] - 0.25, 1e30, -INF, kth[3], kth[4] - 0.25, 0.0, -INF, kth[7] - 0.5]
    cap = 128
    picks, out, indptr, done = run(batch, lut, edges, counts, thresholds(values), cap=cap, split=split)
    check(batch, expected, counts, picks, out, indptr)
    beat = [int((expected[r, : LENS[r // KV_HEADS]] >= values[r]).sum()) for r in range(8)]
    assert done.tolist() == [int(int(counts[r]) <= beat[r] <= cap) for r in range(8)]
    assert 0 < sum(done.tolist()) < 8, (beat, "every case: enough, too few, too many")


def test_the_threshold_carried_between_steps_converges_and_the_picks_stay_exact() -> None:
    """Steps whose scores drift: from −inf (every row overflows) the thresholds settle where
    the candidates fit, and every step's picks are the exact top-K."""
    batch, lut, edges, _ = setup(seed=32)
    counts = torch.tensor([40, 30, 40, 40, 12, 12, 33, 20], dtype=torch.int32)
    thresh = thresholds([-INF] * 8)
    g = torch.Generator().manual_seed(33)
    flags = []
    for step in range(4):
        drift = lut + torch.randint(0, 3, lut.shape, generator=g).float() / 8  # the query moves a little
        expected = score_reference(drift, batch, edges, SINKS, WINDOW, L, "max")
        picks, out, indptr, done = run(batch, drift, edges, counts, thresh, cap=128, split=True)
        check(batch, expected, counts, picks, out, indptr)
        flags.append(done.tolist())
    assert flags[0] == [int(LENS[r // KV_HEADS] <= 128) for r in range(8)], "at −inf every visible column is one"
    assert sum(flags[-1]) >= 6, flags


def test_the_next_threshold_is_the_margin_rank_of_the_candidates() -> None:
    batch, lut, edges, expected = setup(seed=34)
    counts = torch.tensor([40, 30, 40, 40, 12, 1, 33, 20], dtype=torch.int32)
    cap = 512  # every visible column fits
    thresh = thresholds([-INF, -INF, 1e30, -INF, -INF, -INF, -INF, -INF])
    run(batch, lut, edges, counts, thresh, cap=cap, split=False)
    got = thresh.cpu()
    for r in (0, 1, 3, 4, 5, 6, 7):
        n, k = LENS[r // KV_HEADS], int(counts[r])
        m = min(n, max(k, min(2 * k, (k + cap) // 2)))
        want = torch.sort(expected[r, :n], descending=True).values[m - 1]
        assert float(got[POOL[r // KV_HEADS] * KV_HEADS + r % KV_HEADS]) == float(want), r
    assert float(got[POOL[1] * KV_HEADS]) == -INF, "too few candidates (none beat 1e30): −inf next"


def test_capacity_follows_the_width_up_to_its_limit() -> None:
    assert candidate_capacity(1056) == 4096 and candidate_capacity(300) == 1024 and candidate_capacity(4005) == MAX_CAP


@pytest.mark.parametrize("lens, steps", [([300, 120], 4), pytest.param([32000, 9000], 8, marks=pytest.mark.gpu)])
def test_the_decoder_picks_the_same_with_candidates_over_steps(lens: list[int], steps: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``SparseDecoder.select`` with candidate buffers (after ``use_candidates``) hands attention
    the indices the radix select gives, step after step, while its thresholds settle (on the
    GPU at 32K, where the split select runs 16 programs a row)."""
    import json
    from pathlib import Path

    from a2ats_sglang.method.codebook import Codebook, ModelIdentity
    from a2ats_sglang.method.rope import RopeSpec
    from a2ats_sglang.method.wrope import DistanceBuckets
    from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers, SparseDecoder

    if not torch.cuda.is_available():  # several programs a row: the workspace is reused with rows skipped
        monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", 32)
    config = json.loads((Path(__file__).parent / "configs/smollm2-135m.json").read_text())
    config["num_hidden_layers"] = 1
    book = Codebook.random(ModelIdentity.from_hf_config(config), 64)
    m = book.meta.model
    hkv, dim = m.num_kv_heads, m.head_dim
    context = max(lens) + 64
    slots = sum(lens) + 10 * len(lens) + 8
    dec = SparseDecoder(book, slots, context, Budget(2, 8, 0.1, 0, None), DistanceBuckets.log2(8, context), "max", DEVICE)
    g = torch.Generator().manual_seed(40)
    rope = RopeSpec.from_dict(m.rope)
    req_to_token = torch.zeros(3, context, dtype=torch.int32)
    perm = torch.randperm(slots - 1, generator=g) + 1
    start = 0
    for r, n in enumerate(lens):
        loc = perm[start : start + n + 10]
        start += n + 10
        req_to_token[r + 1, : n + 10] = loc.int()
        k = rope.apply(torch.randn(n + 10, hkv, dim, generator=g) * torch.linspace(3, 0.3, dim), torch.arange(n + 10))
        dec.encode(0, k.bfloat16().to(DEVICE), loc.to(DEVICE), dec.rotary.key_tables(torch.arange(n + 10, device=DEVICE)))
    req_to_token, rpi = req_to_token.to(DEVICE), torch.tensor([1, 2], device=DEVICE)
    dec.use_candidates(request_rows=3)
    radix, cands = (SparseDecodeBuffers(2, hkv, context, dec.width, 64, dec.num_buckets, DEVICE, candidates=c)
                    for c in (False, True))
    q0 = torch.randn(len(lens), m.num_attention_heads, dim, generator=g)
    picked = []
    for step in range(steps):
        seq_lens = torch.tensor([n + step for n in lens], device=DEVICE)
        q = (q0 + 0.1 * torch.randn(q0.shape, generator=g)).bfloat16().to(DEVICE)  # the query drifts
        tables = dec.step_tables(seq_lens - 1, req_to_token, rpi)
        for buffers in (radix, cands):
            buffers.set_counts(seq_lens, dec.budget)
            dec.select(0, q, tables.queries, req_to_token, rpi, seq_lens, buffers)
        n = int(radix.indptr[len(lens) * hkv])
        assert torch.equal(cands.indices[:n].cpu(), radix.indices[:n].cpu()), step
        picked.append(int(cands.done[: len(lens) * hkv].sum()))
    # from −inf only the short request's rows fit; the long one's thresholds settle over the steps
    assert picked[0] < picked[-1] == len(lens) * hkv, picked
