"""The shared host-KV cache (kernels/shared_cache.py) against a plain model: over steps of
changing picks by requests that share a prefix, every pick's attention index names a cell that
holds its token's K/V, hits are exactly the picks cached before the step, a token two requests
miss together is copied once, the tables stay consistent under eviction, and a rewritten slot is
read anew. With GPU homes (slots ``1 … homes``), their picks are read in place and the rest go
through the cache keyed by host row."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.kernels.shared_cache import SENTINEL, fetch_shared, invalidate

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = 16


class Cache:
    def __init__(self, cells: int, seed: int = 0, homes: int = 0) -> None:
        g = self.g = torch.Generator().manual_seed(seed)
        self.kv_heads, self.dim = 2, 8
        self.lens = [60, 50, 1]  # the last: a CUDA-graph padding request on pool row 0
        self.rid = [1, 2, 0]
        self.logical, self.homes = 200, homes
        host_rows = self.logical - homes  # slot s > homes is host row s − homes
        self.host_k = torch.randn(host_rows, self.kv_heads, self.dim, generator=g).bfloat16().to(DEVICE)
        self.host_v = torch.randn(host_rows, self.kv_heads, self.dim, generator=g).bfloat16().to(DEVICE)
        gpu_slots = homes + 5 + (cells + self.kv_heads - 1) // self.kv_heads + 3
        self.base = (homes + 5) * self.kv_heads  # cells after the homes and 5 slots of other use
        self.dev_k = torch.zeros(gpu_slots, self.kv_heads, self.dim, dtype=torch.bfloat16, device=DEVICE)
        self.dev_v = torch.zeros_like(self.dev_k)
        self.dev_k[1 : homes + 1] = torch.randn(homes, self.kv_heads, self.dim, generator=g).bfloat16().to(DEVICE)
        self.dev_v[1 : homes + 1] = torch.randn(homes, self.kv_heads, self.dim, generator=g).bfloat16().to(DEVICE)
        self.homes_k, self.homes_v = self.dev_k[: homes + 1].clone(), self.dev_v[: homes + 1].clone()
        r2t = torch.zeros(3, 64, dtype=torch.int32)
        perm = torch.randperm(self.logical - 1, generator=g) + 1
        r2t[1, :60] = perm[:60].int()
        r2t[2, :30] = r2t[1, :30]  # a shared prefix (a radix-cache hit): the same logical slots
        r2t[2, 30:50] = perm[60:80].int()
        self.req_to_token = r2t.to(DEVICE)
        self.cached = torch.full((host_rows * self.kv_heads + 1,), -1, dtype=torch.int32, device=DEVICE)
        self.cached[-1] = SENTINEL
        self.owner = torch.full((cells,), -1, dtype=torch.int32, device=DEVICE)
        self.used = torch.full((cells,), -1, dtype=torch.int32, device=DEVICE)
        self.hand = torch.zeros(1, dtype=torch.int64, device=DEVICE)
        self.epoch = torch.zeros(1, dtype=torch.int32, device=DEVICE)
        self.counters = torch.zeros(3, dtype=torch.int64, device=DEVICE)
        self.rows = len(self.lens) * self.kv_heads
        self.width = 12

    def slot(self, row: int, t: int) -> int:
        return int(self.req_to_token[self.rid[row // self.kv_heads], t])

    def at_home(self, row: int, t: int) -> bool:
        return self.homes > 0 and self.slot(row, t) <= self.homes

    def key(self, row: int, t: int) -> int:
        """The cache key of a host-homed pick: its host row's kv head."""
        return (self.slot(row, t) - self.homes) * self.kv_heads + row % self.kv_heads

    def step(self, picks: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
        """One layer-step with these picks per row. → (each row's attention indices, stats)"""
        self.epoch += 1
        counts = torch.tensor([len(p) for p in picks], dtype=torch.int32, device=DEVICE)
        table = torch.zeros(self.rows, self.width, dtype=torch.int32)
        for r, p in enumerate(picks):
            table[r, : len(p)] = torch.tensor(p, dtype=torch.int32)
        indptr = torch.zeros(self.rows + 1, dtype=torch.int32)
        indptr[1:] = torch.cumsum(counts.cpu(), 0)
        out = torch.full((int(indptr[-1]),), -7, dtype=torch.int32, device=DEVICE)
        stats = torch.zeros(self.rows, 2, dtype=torch.int32, device=DEVICE)
        scratch = torch.zeros(self.rows, 3 * self.width, dtype=torch.int32, device=DEVICE)
        fetch_shared(table.to(DEVICE), counts, self.req_to_token, torch.tensor(self.rid, device=DEVICE),
                     self.cached, self.owner, self.used, self.hand, self.epoch, scratch, self.host_k, self.host_v,
                     self.dev_k, self.dev_v, self.base, indptr.to(DEVICE), out, stats, self.rows,
                     counters=self.counters, homes=self.homes, block=BLOCK)
        out = out.cpu()
        return [out[indptr[r] : indptr[r + 1]].tolist() for r in range(self.rows)], stats.cpu()

    def check_tables(self) -> None:
        """Every cached key names a cell that it owns and that holds its K/V."""
        cached, owner = self.cached[:-1].cpu(), self.owner.cpu()
        dk, dv = self.dev_k.view(-1, self.dim).cpu(), self.dev_v.view(-1, self.dim).cpu()
        hk, hv = self.host_k.view(-1, self.dim).cpu(), self.host_v.view(-1, self.dim).cpu()
        for key in torch.nonzero(cached >= 0).flatten().tolist():
            c = int(cached[key])
            assert int(owner[c]) == key, (key, c)
            assert torch.equal(dk[self.base + c], hk[key]) and torch.equal(dv[self.base + c], hv[key]), key
        assert int(self.cached[-1]) == SENTINEL
        homes = self.homes + 1  # the GPU homes are never written by the cache
        assert torch.equal(self.dev_k[:homes], self.homes_k) and torch.equal(self.dev_v[:homes], self.homes_v)

    def random_picks(self) -> list[list[int]]:
        out = []
        for r in range(self.rows):
            n = self.lens[r // self.kv_heads]
            k = min(n, int(torch.randint(1, self.width + 1, (1,), generator=self.g)))
            out.append(sorted(torch.randperm(n, generator=self.g)[:k].tolist()))
        return out


def check_step(c: Cache, picks: list[list[int]]) -> tuple[list[list[int]], torch.Tensor]:
    before = c.cached.cpu().clone()
    misses_before, copies_before = int(c.counters[1]), int(c.counters[2])
    idx, stats = c.step(picks)
    dk, dv = c.dev_k.view(-1, c.dim).cpu(), c.dev_v.view(-1, c.dim).cpu()
    hk, hv = c.host_k.view(-1, c.dim).cpu(), c.host_v.view(-1, c.dim).cpu()
    cells = c.owner.shape[0]
    new_keys = set()
    for r, p in enumerate(picks):
        g = r % c.kv_heads
        for t, i in zip(p, idx[r]):
            if c.at_home(r, t):  # read in place
                assert i == c.slot(r, t) * c.kv_heads + g, (r, t, i)
        away = [t for t in p if not c.at_home(r, t)]
        keys = [c.key(r, t) for t in away]
        for key, i in zip(keys, [i for t, i in zip(p, idx[r]) if not c.at_home(r, t)]):
            assert c.base <= i < c.base + cells, (r, i)
            assert torch.equal(dk[i], hk[key]) and torch.equal(dv[i], hv[key]), (r, key)
        hits = sum(int(before[k]) >= 0 for k in keys)
        assert stats[r].tolist() == [hits, len(away) - hits], r
        new_keys |= {k for k in keys if int(before[k]) < 0}
    assert int(c.counters[2]) - copies_before == len(new_keys)  # each missing token copied once
    assert int(c.counters[1]) - misses_before == int(stats[:, 1].sum())  # misses, shared ones included
    c.check_tables()
    return idx, stats


@pytest.mark.parametrize("homes", [0, 70])  # every slot host-homed; about a third of them on the GPU
@pytest.mark.parametrize("cells", [200, 3 * 2 * 12 + 1])  # roomy; as small as a step allows
def test_steps_of_random_picks_keep_the_cache_consistent(cells: int, homes: int) -> None:
    c = Cache(cells, seed=cells, homes=homes)
    at_home = 0
    for _ in range(12):
        picks = c.random_picks()
        at_home += sum(c.at_home(r, t) for r, p in enumerate(picks) for t in p)
        check_step(c, picks)
    assert (at_home > 20) == (homes > 0)  # the case ran (in place picks are neither hits nor misses)
    if cells < 160 and homes == 0:  # fewer cells than the requests' distinct (slot, kv head) keys
        assert int(c.counters[2]) > cells  # cells were taken back and refilled


def test_requests_sharing_a_prefix_share_its_cells() -> None:
    c = Cache(200)
    shared = list(range(0, 24, 2))  # positions < 30: the same logical slots in both requests
    picks = [shared, shared, shared, shared, [0], [0]]
    idx, stats = check_step(c, picks)
    assert idx[0] == idx[2] and idx[1] == idx[3]  # kv head 0 of both requests, and kv head 1
    assert int(c.counters[2]) == 2 * len(shared) + 2  # copied once for both requests
    assert int(c.counters[1]) == 4 * len(shared) + 2  # though both missed
    idx2, stats2 = check_step(c, picks)  # all resident now
    assert idx2 == idx and stats2[:, 1].tolist() == [0] * 6


def test_a_rewritten_slot_is_read_anew() -> None:
    c = Cache(200)
    picks = [[1, 2, 3], [1], [5], [5], [0], [0]]
    check_step(c, picks)
    slot = int(c.req_to_token[1, 2])
    c.host_k[slot] = -c.host_k[slot]  # SGLang handed the slot to a new token
    c.host_v[slot] = 7.0
    invalidate(c.cached, torch.tensor([slot], device=DEVICE), c.kv_heads)
    idx, stats = check_step(c, picks)
    assert stats[0].tolist() == [2, 1]  # position 2 is a miss again, the rest hits


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_invalidation_clears_every_kv_head_of_the_written_slots_and_nothing_else(dtype: torch.dtype) -> None:
    kv_heads, logical = 3, 700  # not a power of two; more slots than one program's block
    g = torch.Generator().manual_seed(11)
    cached = torch.randint(0, 50, (logical * kv_heads + 1,), generator=g, dtype=torch.int32)
    cached[-1] = SENTINEL
    loc = torch.randint(1, logical, (300,), generator=g)
    loc[:10] = loc[10:20]  # a batch may write a slot twice (its layers' chunks)
    expect = cached.clone()
    for s in loc.tolist():
        expect[s * kv_heads : (s + 1) * kv_heads] = -1
    got = cached.to(DEVICE)
    invalidate(got, loc.to(dtype).to(DEVICE), kv_heads, block=64)
    assert torch.equal(got.cpu(), expect)
    invalidate(got, loc[:0].to(dtype).to(DEVICE), kv_heads)  # an empty write changes nothing
    assert torch.equal(got.cpu(), expect)


def test_many_requests_missing_the_same_tokens_at_once_copy_each_once() -> None:
    """32 requests over one document pick the same 12 tokens in the same step: on a GPU their
    programs race for every token; each token is copied once and every request reads it."""
    kv_heads, dim, n_req, doc, width = 2, 8, 32, 40, 12
    g = torch.Generator().manual_seed(5)
    logical = 100
    host_k = torch.randn(logical, kv_heads, dim, generator=g).bfloat16().to(DEVICE)
    host_v = torch.randn(logical, kv_heads, dim, generator=g).bfloat16().to(DEVICE)
    cells = n_req * kv_heads * width + 1
    dev_k = torch.zeros(cells // kv_heads + 2, kv_heads, dim, dtype=torch.bfloat16, device=DEVICE)
    dev_v = torch.zeros_like(dev_k)
    r2t = torch.zeros(n_req + 1, doc, dtype=torch.int32)
    r2t[1:] = (torch.randperm(logical - 1, generator=g)[:doc] + 1).int()  # every request: the same document
    cached = torch.full((logical * kv_heads + 1,), -1, dtype=torch.int32, device=DEVICE)
    cached[-1] = SENTINEL
    owner = torch.full((cells,), -1, dtype=torch.int32, device=DEVICE)
    used = torch.full((cells,), -1, dtype=torch.int32, device=DEVICE)
    hand, epoch = torch.zeros(1, dtype=torch.int64, device=DEVICE), torch.ones(1, dtype=torch.int32, device=DEVICE)
    counters = torch.zeros(3, dtype=torch.int64, device=DEVICE)
    rows = n_req * kv_heads
    picks = torch.arange(0, 2 * width, 2, dtype=torch.int32).repeat(rows, 1)
    counts = torch.full((rows,), width, dtype=torch.int32)
    indptr = torch.arange(rows + 1, dtype=torch.int32) * width
    out = torch.full((rows * width,), -7, dtype=torch.int32, device=DEVICE)
    stats = torch.zeros(rows, 2, dtype=torch.int32, device=DEVICE)
    scratch = torch.zeros(rows, 3 * width, dtype=torch.int32, device=DEVICE)
    fetch_shared(picks.to(DEVICE), counts.to(DEVICE), r2t.to(DEVICE), torch.arange(1, n_req + 1, device=DEVICE),
                 cached, owner, used, hand, epoch, scratch, host_k, host_v, dev_k, dev_v, 0, indptr.to(DEVICE), out,
                 stats, rows, counters=counters, block=BLOCK)
    assert int(counters[2]) == width * kv_heads and int(counters[0]) == 0  # one copy a (token, kv head)
    assert int(counters[1]) == rows * width  # every request missed
    idx = out.view(n_req, kv_heads, width).cpu()
    assert (idx == idx[0]).all()  # every request reads the same cells
    rows_k = dev_k.view(-1, dim).cpu()
    for h in range(kv_heads):
        for j, t in enumerate(picks[0].tolist()):
            assert torch.equal(rows_k[idx[0, h, j]], host_k[int(r2t[1, t]), h].cpu())
    assert stats[:, 1].sum() == rows * width  # each request counted its own misses


def test_invalidation_skips_gpu_homes_and_clears_host_rows_by_their_key() -> None:
    kv_heads, homes, host_rows = 2, 50, 40
    cached = torch.arange(host_rows * kv_heads + 1, dtype=torch.int32)
    cached[-1] = SENTINEL
    got = cached.to(DEVICE)
    invalidate(got, torch.tensor([3, 50, 51, 89], device=DEVICE), kv_heads, homes=homes)
    expect = cached.clone()
    expect[2:4] = -1  # slot 51: host row 1
    expect[78:80] = -1  # slot 89: host row 39
    assert torch.equal(got.cpu(), expect)  # slots 3 and 50, GPU homes, touched nothing
