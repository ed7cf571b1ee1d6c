"""The decode top-K (table ranges → score kernel counting → :func:`select_topk`) against a stable
descending sort, on CPU through the Triton interpreter; serving shapes in the ``gpu`` tests."""

from __future__ import annotations

import pytest
import torch
from a2ats_sglang.kernels import select
from a2ats_sglang.kernels.lut import MAX_RUNS, folded_lookup_table
from a2ats_sglang.kernels.score import score_tokens
from a2ats_sglang.kernels.select import (
    CANDIDATES,
    HIST_INTS,
    ROW_INTS,
    SPLIT_ALIGN,
    range_buffer,
    select_topk,
    topk_splits,
    topk_workspace,
)
from test_kernels import DEVICE, INF, Batch, fold, score_reference, topk_reference, tricky_scores, write_reference


def row_ranges(table: torch.Tensor, rows_cap: int) -> torch.Tensor:
    """The range buffer as the table kernel leaves it, from a folded ``[bs, nb, Hkv, C]`` table:
    one run a bucket holds each (row, bucket)'s min and max."""
    bs, nb, kv_heads, _ = table.shape
    out = range_buffer(rows_cap, nb, "cpu")
    per = table.permute(0, 2, 1, 3).reshape(bs * kv_heads, nb, -1)  # [rows, nb, C]
    out[: bs * kv_heads, :, 0, 0] = per.amin(2)
    out[: bs * kv_heads, :, 0, 1] = per.amax(2)
    return out


def run_select(scores_table: torch.Tensor, batch: Batch, edges: list[int], sinks: int, window: int, L: int,
               counts: torch.Tensor, ranges: torch.Tensor, workspace: torch.Tensor, kmax: int,
               write: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score with counting, then select. → (picks [rows, kmax], indices, indptr) on CPU"""
    kv_heads = batch.codes.shape[1]
    rows = len(batch.lens) * kv_heads
    scores = torch.full((rows, L), INF, device=DEVICE)  # stale +inf past each length: never read
    lens = batch.lens.to(DEVICE)
    score_tokens(scores_table.to(DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE),
                 lens, torch.tensor(edges, dtype=torch.int32, device=DEVICE), sinks, window, scores, block=128,
                 pad=False, topk_workspace=workspace, ranges=ranges.to(DEVICE))
    indptr = torch.zeros(rows + 1, dtype=torch.int32)
    indptr[1:] = counts.cumsum(0)
    picks = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    indices = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
    out = (indptr.to(DEVICE), batch.req_to_token.to(DEVICE), batch.pool.to(DEVICE), indices) if write else None
    select_topk(scores, counts.to(DEVICE), rows, picks, workspace, ranges.to(DEVICE), lens, kv_heads, out)
    return picks.cpu(), indices.cpu(), indptr


def check(picks: torch.Tensor, expected: torch.Tensor, lens: list[int], counts: torch.Tensor, kv_heads: int) -> None:
    """Each row's picks are the exact top-K (ties to the lowest columns): those above the
    threshold's bin ascending, then the bin's ascending (two ascending runs)."""
    for r in range(picks.shape[0]):
        n = lens[r // kv_heads]
        k = min(int(counts[r]), n)
        got = picks[r, :k].tolist()
        assert sorted(got) == topk_reference(expected[r, :n], k), r
        descents = sum(1 for a, b in zip(got, got[1:]) if b < a)
        assert descents <= 1, (r, got)
        assert (picks[r, k:] == -1).all(), r


def workspace_is_clean(workspace: torch.Tensor, rows: int) -> None:
    ws = workspace.view(-1, ROW_INTS)[:rows].cpu()
    assert not ws[:, : HIST_INTS].any(), "digit counts zero for the next layer"
    assert not ws[:, HIST_INTS].any(), "arrival counters back at zero"


@pytest.mark.parametrize("min_split", [None, 64])  # one split a row; several
def test_lookup_table_entries_layer_after_layer(min_split: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores gathered from small-integer tables (ties everywhere, straddling the k-th): the picks
    equal a stable sort's, the KV-pool rows are written, and the workspace is clean after each
    layer, so the next one's counting starts from zero."""
    if min_split is not None:
        monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", min_split)
    kv_heads, size, sinks, window, kmax, L = 2, 64, 4, 8, 96, 1536
    lens = [L, 77, 1, L - 200]
    rows = len(lens) * kv_heads
    assert select.topk_splits(rows, L) == (1 if min_split is None else 16)
    edges = [window, 64, 512]
    counts = torch.tensor([96, 30, 96, 96, 1, 1, 40, 20], dtype=torch.int32)
    workspace = topk_workspace(rows, DEVICE)
    for layer in range(3):
        batch = Batch(lens, kv_heads, size, max_ctx=L, seed=30 + layer)
        gen = torch.Generator().manual_seed(40 + layer)
        lut = torch.randint(0, 5 + 40 * layer, (len(lens), len(edges), 2 * kv_heads, size), generator=gen).float()
        table = fold(lut, kv_heads, "max")
        picks, indices, indptr = run_select(table, batch, edges, sinks, window, L, counts, row_ranges(table, rows),
                                            workspace, kmax)
        expected = score_reference(lut, batch, edges, sinks, window, L, "max")
        check(picks, expected, lens, counts, kv_heads)
        clamped = torch.minimum(counts, batch.lens.repeat_interleave(kv_heads).int())
        assert torch.equal(indices, write_reference(picks, clamped, indptr, batch, kv_heads, rows, indices.numel()))
        workspace_is_clean(workspace, rows)


@pytest.mark.parametrize("case", ["narrow", "empty", "wide"])
def test_any_range_gives_the_same_picks(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The range only decides how many tokens share the threshold's bin: a range narrower than
    the scores (most clamp to bin 0 or 255), an empty one (every score in bin 0) or a far wider
    one give the exact top-K all the same, through the whole-row path where the bin overflows
    the candidate list."""
    monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", 256)
    kv_heads, size, sinks, window, kmax, L = 1, 256, 2, 4, 160, 2048
    lens = [L, 1500]
    rows = 2
    edges = [window, 128]
    counts = torch.tensor([160, 100], dtype=torch.int32)
    batch = Batch(lens, kv_heads, size, max_ctx=L, seed=51)
    lut = torch.randn(2, len(edges), kv_heads, size, generator=torch.Generator().manual_seed(52))
    table = fold(lut, kv_heads, "max")
    ranges = range_buffer(rows, len(edges), "cpu")
    if case == "narrow":
        ranges[:, 0, 0] = torch.tensor([-0.01, 0.01])
    elif case == "wide":
        ranges[:, 0, 0] = torch.tensor([-1e6, 1e6])
    assert L > CANDIDATES  # the "empty" rows put every score in one bin: more than the list holds
    workspace = topk_workspace(rows, DEVICE)
    picks, _, _ = run_select(table, batch, edges, sinks, window, L, counts, ranges, workspace, kmax, write=False)
    check(picks, score_reference(lut, batch, edges, sinks, window, L, "max"), lens, counts, kv_heads)
    workspace_is_clean(workspace, rows)


def test_a_tie_group_larger_than_the_list_is_resolved_over_the_row() -> None:
    """1,500 tokens share one score at the threshold, and a second value shares its bin: the bin
    overflows the candidate list and the last split resolves it over the row, ties to the lowest
    columns."""
    kv_heads, size, kmax, L = 1, 4, 700, 3000
    batch = Batch([L], kv_heads, size, max_ctx=L, seed=61)
    table = torch.tensor([0.0, 1.0, 1.0 + 1e-6, 2.0]).view(1, 1, 1, size)  # 1 and 1+1e-6: one bin
    codes = torch.zeros_like(batch.codes_long)
    slots = batch.req_to_token[1].long()
    codes[slots[:1500], 0] = 1
    codes[slots[1500:1600], 0] = 2
    codes[slots[1600:2000], 0] = 3
    batch.codes = codes.to(torch.int16)
    counts = torch.tensor([kmax], dtype=torch.int32)
    workspace = topk_workspace(1, DEVICE)
    picks, _, _ = run_select(table, batch, [0], 0, 0, L, counts, row_ranges(table, 1), workspace, kmax)
    expected = table[0, 0, 0][codes[slots, 0]][None]  # [1, L]
    check(picks, expected, [L], counts, kv_heads)
    assert sorted(picks[0].tolist()) == list(range(200)) + list(range(1500, 2000)), "200 ties, 100 + 400 above"
    workspace_is_clean(workspace, 1)


def test_lookup_table_writes_each_rows_range() -> None:
    """Every (row, bucket) slot of the range buffer holds the min and max of the table entries of
    that request, kv head and bucket over its codeword runs, the unused runs empty: stale values
    from an earlier, larger launch are overwritten."""
    kv_heads, group, dim, size, nb, bs = 2, 3, 16, 200, 3, 2
    gen = torch.Generator().manual_seed(71)
    decoded = torch.randn(kv_heads, size, dim, generator=gen).bfloat16()
    q = torch.randn(bs, kv_heads * group, dim, generator=gen).bfloat16()
    cos = torch.ones(bs, nb, dim // 2)
    sin = torch.zeros(bs, nb, dim // 2)
    ranges = range_buffer(bs * kv_heads + 1, nb, "cpu")
    ranges[..., 0], ranges[..., 1] = -5.0, 5.0  # stale, wider than any entry
    table = folded_lookup_table(decoded, q, cos, sin, group, True, 1.0, "max", ranges=ranges)  # [bs·nb, Hkv, C]
    per = table.view(bs, nb, kv_heads, size).permute(0, 2, 1, 3).reshape(bs * kv_heads, nb, size)
    assert torch.equal(ranges[: bs * kv_heads, :, :, 0].amin(2), per.amin(2))
    assert torch.equal(ranges[: bs * kv_heads, :, :, 1].amax(2), per.amax(2))
    assert (ranges[bs * kv_heads] == torch.tensor([-5.0, 5.0])).all(), "rows past the batch untouched"
    assert ranges.shape[2] == MAX_RUNS


def test_counting_needs_the_range() -> None:
    batch = Batch([40], 1, 16, max_ctx=64, seed=1)
    with pytest.raises(AssertionError, match="range"):
        score_tokens(torch.zeros(1, 1, 1, 16, device=DEVICE), batch.codes.to(DEVICE), batch.req_to_token.to(DEVICE),
                     batch.pool.to(DEVICE), batch.lens.to(DEVICE), torch.tensor([8], dtype=torch.int32, device=DEVICE),
                     0, 8, torch.empty(1, 64, device=DEVICE), block=128, topk_workspace=topk_workspace(1, DEVICE))


def digit_counts(scores: torch.Tensor, lens: list[int], kv_heads: int, ranges: torch.Tensor, workspace: torch.Tensor,
                 splits: int) -> None:
    """What the score kernel counts, in torch: the digit over each row's range (the same float32
    operations), per split of the row's own length, into the workspace."""
    rows, _ = scores.shape
    ws = workspace.view(-1, ROW_INTS)
    for r in range(rows):
        n = lens[r // kv_heads]
        lo, hi = ranges[r, ..., 0].min(), ranges[r, ..., 1].max()
        ok = bool(hi > lo) and bool(torch.isfinite(hi - lo))
        scale = 256.0 / (hi - lo) if ok else torch.tensor(0.0)
        x = (scores[r, :n] - (lo if ok else 0.0)) * scale if ok else torch.zeros(n)
        digit = x.clamp(0, 255).to(torch.int64)
        split_len = -(-(-(-n // splits)) // SPLIT_ALIGN) * SPLIT_ALIGN
        for sp in range(splits):
            part = digit[sp * split_len : (sp + 1) * split_len]
            ws[r, sp * 256 : (sp + 1) * 256] = torch.bincount(part, minlength=256).int()


@pytest.mark.parametrize("min_split", [None, 64])
def test_tricky_scores_pick_the_exact_topk(min_split: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Massive ties, ±inf, subnormals, ±0 and huge values straight into the select (the score
    kernel's counts mirrored in torch), over a range that fits some rows and not others."""
    if min_split is not None:
        monkeypatch.setattr(select, "MIN_SPLIT_COLUMNS", min_split)
    rows, L, kmax = 8, 700, 300
    scores = tricky_scores(rows, L, seed=10)
    scores[6] = torch.randn(L) * 3
    lens = [700] * rows
    counts = torch.tensor([300, 250, 233, 100, 299, 1, 0, 300], dtype=torch.int32)
    ranges = range_buffer(rows, 1, "cpu")
    ranges[:, 0, 0] = torch.tensor([-3.0, 3.0])
    ranges[5, 0, 0] = torch.tensor([-1e30, 1e30])
    workspace = topk_workspace(rows, DEVICE)
    splits = topk_splits(rows, L)
    digit_counts(scores, lens, 1, ranges, workspace, splits)
    picks = torch.full((rows, kmax), -1, dtype=torch.int32, device=DEVICE)
    select_topk(scores.to(DEVICE), counts.to(DEVICE), rows, picks, workspace, ranges.to(DEVICE),
                torch.tensor(lens, device=DEVICE), 1)
    check(picks.cpu(), scores, lens, counts, 1)
    workspace_is_clean(workspace, rows)


# -- serving-sized shapes on the GPU ---------------------------------------------------------


@pytest.mark.gpu
def test_kernels_capture_in_a_cuda_graph() -> None:
    """A decode step's table, scores and select, several splits a row, replay from a CUDA graph
    and pick what they picked outside it, replay after replay."""
    kv_heads, L, kmax, size = 2, 16384, 256, 512
    batch = Batch([16384, 12000], kv_heads, size, max_ctx=L, seed=17)
    lut = torch.randn(2, 2, kv_heads, size, device="cuda")
    ranges = row_ranges(lut.cpu(), 4).cuda()
    codes, req_to_token, pool, lens = (t.cuda() for t in (batch.codes, batch.req_to_token, batch.pool, batch.lens))
    edges = torch.tensor([64, 1024], dtype=torch.int32, device="cuda")
    scores = torch.empty(4, L, device="cuda")
    counts = torch.full((4,), kmax, dtype=torch.int32, device="cuda")
    indptr = torch.arange(5, dtype=torch.int32, device="cuda") * kmax
    picks = torch.empty(4, kmax, dtype=torch.int32, device="cuda")
    out = torch.empty(4 * kmax, dtype=torch.int32, device="cuda")
    workspace = topk_workspace(4, "cuda")
    assert topk_splits(4, L) > 1

    def step() -> None:
        for _ in range(3):  # layers on one workspace
            score_tokens(lut, codes, req_to_token, pool, lens, edges, 4, 64, scores, pad=False,
                         topk_workspace=workspace, ranges=ranges)
            select_topk(scores, counts, 4, picks, workspace, ranges, lens, kv_heads, (indptr, req_to_token, pool, out))

    step()  # compile outside the capture
    torch.cuda.synchronize()
    expected = out.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(3):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)
        workspace_is_clean(workspace, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("graph_context", [32768, 131072])  # a graph sized for the longest request, or 128K
def test_table_score_and_select_pick_the_exact_topk_at_serving_shape(graph_context: int) -> None:
    """Llama-3.1-8B shape, 32K contexts: the group-reduced table (queries rotated in the kernel)
    and its ranges, the counted scores and the select of the decode path against plain torch on
    inputs whose sums are exact (small integers, quarter-turn rotations), so every entry is
    bit-comparable and the many ties test which columns win them (the lowest)."""
    kv_heads, group, dim, size, sinks, window = 8, 4, 128, 4096, 4, 64
    edges = [window, 128, 256, 512, 1024, 2048, 4096, 8192]
    lens = [32768, 20000, 5000, 1]
    bs, nb, L = len(lens), len(edges), graph_context
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
    rows = bs * kv_heads
    ranges = range_buffer(rows, nb, "cuda")
    table = folded_lookup_table(decoded, q_post, cos, sin, group, True, 1.0, "max", ranges=ranges)
    assert torch.equal(table, want_table)

    slots = bs * max(lens) + 1
    codes = torch.randint(0, size, (slots, kv_heads), device="cuda", generator=g, dtype=torch.int32).to(torch.int16)
    req_to_token = torch.zeros(bs + 1, L, dtype=torch.int32, device="cuda")
    req_to_token[1:, : max(lens)] = (torch.randperm(slots - 1, device="cuda", generator=g)[: bs * max(lens)] + 1).view(bs, -1).int()
    pool = torch.arange(1, bs + 1, device="cuda")
    seq_lens = torch.tensor(lens, device="cuda")
    edges_t = torch.tensor(edges, dtype=torch.int32, device="cuda")
    counts = torch.tensor([min(n, 1056 + sinks + window) for n in lens], dtype=torch.int32, device="cuda")
    counts = counts.repeat_interleave(kv_heads)
    indptr = torch.zeros(rows + 1, dtype=torch.int32, device="cuda")
    indptr[1:] = counts.cumsum(0)
    scores = torch.empty(rows, L, device="cuda")
    workspace = topk_workspace(rows, "cuda")
    score_tokens(table.view(bs, nb, kv_heads, size), codes, req_to_token, pool, seq_lens, edges_t, sinks, window,
                 scores, pad=False, topk_workspace=workspace, ranges=ranges)
    picks = torch.full((rows, int(counts.max())), -1, dtype=torch.int32, device="cuda")
    indices = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device="cuda")
    select_topk(scores, counts, rows, picks, workspace, ranges, seq_lens, kv_heads, (indptr, req_to_token, pool, indices))

    t = torch.arange(max(lens), device="cuda")
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
            assert torch.equal(scores[r, :n], want), r
            got = picks[r, :k].long()
            assert torch.equal(got.sort().values, top), r  # ties to the lowest columns
            assert torch.equal(indices[indptr[r] : indptr[r] + k].long(), slot[got] * kv_heads + h), r
    workspace_is_clean(workspace, rows)
