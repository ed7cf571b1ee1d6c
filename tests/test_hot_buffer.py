"""The offload mode's hot-buffer fetch against a plain model of what must be resident: over
several steps of changing picks, every picked token's K/V reaches the GPU slot its attention
index names, hits are exactly the picks already resident, and nothing resident is corrupted."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.kernels.hot_buffer import fetch_hot

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INF = float("inf")


class Offload:
    def __init__(self, hot_size: int, seed: int = 0, block_h: int = 1024) -> None:
        self.block_h = block_h
        g = torch.Generator().manual_seed(seed)
        self.g = g
        self.kv_heads, self.dim, self.hot_size = 2, 16, hot_size
        self.lens = [90, 50, 1]  # the last: a CUDA-graph padding request on pool row 0
        self.rid = [1, 2, 0]
        logical, gpu_slots = 300, 3 * hot_size + 5
        self.host_k = torch.randn(logical, self.kv_heads, self.dim, generator=g).bfloat16()
        self.host_v = torch.randn(logical, self.kv_heads, self.dim, generator=g).bfloat16()
        self.dev_k = torch.zeros(gpu_slots, self.kv_heads, self.dim, dtype=torch.bfloat16)
        self.dev_v = torch.zeros_like(self.dev_k)
        self.req_to_token = torch.zeros(3, 100, dtype=torch.int32)
        perm = torch.randperm(logical - 1, generator=g) + 1
        self.req_to_token[1, :90] = perm[:90].int()
        self.req_to_token[2, :50] = perm[90:140].int()
        self.hot_slots = (torch.randperm(gpu_slots, generator=g)[: 3 * hot_size].view(3, hot_size)).int()
        self.hot_tokens = torch.full((3, self.kv_heads, hot_size), -1, dtype=torch.int32)
        self.hand = torch.zeros(3, self.kv_heads, dtype=torch.int32)
        self.rows = len(self.lens) * self.kv_heads

    def step(self, picks: list[list[int]], unpicked: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer-step with these picks per row (``unpicked``: the score of every other
        column, else random). → (out indices, indptr, stats)"""
        width = max(len(p) for p in picks)
        pick_t = torch.zeros(self.rows, width, dtype=torch.int32)
        counts = torch.tensor([len(p) for p in picks], dtype=torch.int32)
        scores = torch.randn(self.rows, 100, generator=self.g)
        for r, p in enumerate(picks):
            pick_t[r, : len(p)] = torch.tensor(p, dtype=torch.int32)  # in any order: indices follow it
            if unpicked is not None:
                scores[r] = unpicked
            scores[r, sorted(p)[:2]] = INF  # protected tokens score +inf, and are always picked
        indptr = torch.zeros(self.rows + 1, dtype=torch.int32)
        indptr[1:] = counts.cumsum(0)
        out = torch.full((int(indptr[-1]),), -1, dtype=torch.int32, device=DEVICE)
        stats = torch.zeros(self.rows, 2, dtype=torch.int32, device=DEVICE)
        state = [t.to(DEVICE) for t in (self.hot_tokens, self.hand, self.dev_k, self.dev_v)]
        fetch_hot(
            pick_t.to(DEVICE), counts.to(DEVICE), scores.to(DEVICE), self.req_to_token.to(DEVICE),
            torch.tensor(self.rid, device=DEVICE), torch.tensor(self.lens, device=DEVICE), self.hot_slots.to(DEVICE),
            state[0], state[1], torch.zeros(self.rows, 2 * self.hot_size, dtype=torch.int32, device=DEVICE),
            self.host_k.to(DEVICE), self.host_v.to(DEVICE), state[2], state[3], indptr.to(DEVICE), out, stats,
            self.rows, block=8, block_h=self.block_h,
        )
        self.hot_tokens, self.hand, self.dev_k, self.dev_v = (t.cpu() for t in state)
        return out.cpu(), indptr, stats.cpu()

    def resident(self, r: int) -> dict[int, int]:
        """Token → hot-slot index of row ``r``, checking that no token is held twice."""
        b, g = divmod(r, self.kv_heads)
        held = [int(t) for t in self.hot_tokens[self.rid[b], g]]
        tokens = [t for t in held if 0 <= t < self.lens[b]]
        assert len(tokens) == len(set(tokens)), "a token held twice"
        return {t: i for i, t in enumerate(held) if 0 <= t < self.lens[b]}

    def check(self, picks: list[list[int]], before: list[dict[int, int]], out, indptr, stats) -> None:
        for r, p in enumerate(picks):
            b, g = divmod(r, self.kv_heads)
            rid = self.rid[b]
            hits = len(set(p) & set(before[r]))
            assert stats[r].tolist() == [hits, len(p) - hits], r
            after = self.resident(r)
            assert set(p) <= set(after), "every pick is resident"
            kept = {t for t, i in before[r].items() if t in after and after[t] == i}
            assert set(p) & set(before[r]) <= kept, "hits are neither moved nor refetched"
            idx = out[int(indptr[r]) : int(indptr[r + 1])].tolist()
            assert all(i % self.kv_heads == g for i in idx)
            slots = [i // self.kv_heads for i in idx]
            want = [int(self.hot_slots[rid, after[t]]) for t in p]
            assert slots == want, "the indices name the slots holding the picks, in pick order"
            for t, i in after.items():  # every resident token's K/V is intact in its slot
                slot, logical = int(self.hot_slots[rid, i]), int(self.req_to_token[rid, t])
                assert torch.equal(self.dev_k[slot, g], self.host_k[logical, g]), (r, t)
                assert torch.equal(self.dev_v[slot, g], self.host_v[logical, g]), (r, t)


@pytest.mark.parametrize(("hot_size", "block_h"), [(12, 1024), (16, 1024), (12, 4), (16, 8)])
def test_fetch_hot_over_steps(hot_size: int, block_h: int) -> None:
    """(``block_h`` < the buffer: the hot slots are scanned in several blocks, and the victim
    scan stops once the misses have their slots.)"""
    o = Offload(hot_size, block_h=block_h)
    g = torch.Generator().manual_seed(1)
    prev = [[] for _ in range(o.rows)]
    for step in range(6):
        picks = []
        for r in range(o.rows):
            n = o.lens[r // o.kv_heads]
            k = min(n, 12 - step % 3)
            keep = [t for t in prev[r] if torch.rand(1, generator=g).item() < 0.7][:k]
            fresh = [int(t) for t in torch.randperm(n, generator=g) if int(t) not in keep]
            picks.append(keep + fresh[: k - len(keep)])
        before = [o.resident(r) for r in range(o.rows)]
        out, indptr, stats = o.step(picks)
        o.check(picks, before, out, indptr, stats)
        prev = picks
    assert int(stats[:, 0].sum()) > 0 and int(stats[:, 1].sum()) > 0, "both hits and misses were exercised"


def test_a_full_hot_buffer_evicts_only_unpicked_tokens() -> None:
    """Picks that fill the whole buffer, then a half-new set: the kept half stays in place."""
    o = Offload(hot_size=8)
    first = [list(range(8)), list(range(10, 18)), list(range(8)), list(range(20, 28)), [0], [0]]
    o.step(first)
    second = [list(range(4, 12)), list(range(10, 14)) + list(range(30, 34)), list(range(8)),
              list(range(40, 48)), [0], [0]]
    before = [o.resident(r) for r in range(o.rows)]
    out, indptr, stats = o.step(second)
    o.check(second, before, out, indptr, stats)
    assert stats[:, 0].tolist() == [4, 4, 8, 0, 1, 1]


def test_minus_inf_scores_neither_pose_as_picks_nor_keep_slots() -> None:
    """A full buffer, then new picks while every other column scores −inf: all old tokens are
    victims, none is taken for a hit."""
    o = Offload(hot_size=8)
    o.step([list(range(8)), list(range(10, 18)), list(range(8)), list(range(20, 28)), [0], [0]])
    second = [list(range(30, 38)), list(range(40, 48)), list(range(4, 12)), list(range(28, 36)), [0], [0]]
    before = [o.resident(r) for r in range(o.rows)]
    out, indptr, stats = o.step(second, unpicked=-INF)
    o.check(second, before, out, indptr, stats)
    assert stats[:, 0].tolist() == [0, 0, 4, 0, 1, 1]


def test_store_to_host_writes_each_tokens_kv_at_its_slot() -> None:
    from a2ats_sglang.kernels.hot_buffer import store_to_host

    g = torch.Generator().manual_seed(3)
    host_k = torch.zeros(50, 3, 24, dtype=torch.bfloat16, device=DEVICE)
    host_v = torch.zeros_like(host_k)
    k = torch.randn(7, 3, 24, generator=g).bfloat16().to(DEVICE)
    v = torch.randn(7, 3, 24, generator=g).bfloat16().to(DEVICE)
    loc = torch.tensor([4, 49, 0, 17, 18, 30, 2], device=DEVICE)
    store_to_host(k, v, loc, host_k, host_v, block_n=4, block_e=32)
    assert torch.equal(host_k[loc], k) and torch.equal(host_v[loc], v)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[loc.cpu()] = False
    assert (host_k.cpu()[untouched] == 0).all() and (host_v.cpu()[untouched] == 0).all()
    # from GPU slots (an extend's staged K/V): host[loc[i]] = staged[rows[i]]
    staged_k = torch.randn(12, 3, 24, generator=g).bfloat16().to(DEVICE)
    staged_v = torch.randn(12, 3, 24, generator=g).bfloat16().to(DEVICE)
    rows = torch.tensor([11, 0, 5], device=DEVICE)
    store_to_host(staged_k, staged_v, loc[:3], host_k, host_v, rows=rows, block_n=2, block_e=32)
    assert torch.equal(host_k[loc[:3]], staged_k[rows]) and torch.equal(host_v[loc[:3]], staged_v[rows])
    assert torch.equal(host_k[loc[3:]], k[3:]), "other slots keep what they had"


def test_load_from_host_gathers_logical_slots_into_gpu_slots() -> None:
    from a2ats_sglang.kernels.hot_buffer import load_from_host

    g = torch.Generator().manual_seed(4)
    host_k = torch.randn(50, 3, 24, generator=g).bfloat16().to(DEVICE)
    host_v = torch.randn(50, 3, 24, generator=g).bfloat16().to(DEVICE)
    dev_k = torch.zeros(20, 3, 24, dtype=torch.bfloat16, device=DEVICE)
    dev_v = torch.zeros_like(dev_k)
    logical = torch.tensor([49, 3, 3, 17, 0], device=DEVICE)  # a prefix may name a slot twice
    gpu = torch.tensor([1, 19, 7, 8, 2], device=DEVICE)
    load_from_host(host_k, host_v, logical, dev_k, dev_v, gpu, block_n=2, block_e=32)
    assert torch.equal(dev_k[gpu], host_k[logical]) and torch.equal(dev_v[gpu], host_v[logical])
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[gpu.cpu()] = False
    assert (dev_k.cpu()[untouched] == 0).all() and (dev_v.cpu()[untouched] == 0).all()


def test_with_gpu_homes_each_token_is_written_to_and_read_from_its_home() -> None:
    """Slots up to ``homes`` live in the GPU KV tensors (row = slot), the rest in host row
    slot − homes: a write goes to its token's home, a prefix load reads from there."""
    from a2ats_sglang.kernels.hot_buffer import load_from_host, store_to_host

    g = torch.Generator().manual_seed(5)
    homes, host_rows, gpu_rows = 20, 30, 40  # GPU rows past the homes: staging, the cache
    host_k = torch.zeros(host_rows, 3, 24, dtype=torch.bfloat16, device=DEVICE)
    host_v = torch.zeros_like(host_k)
    dev_k = torch.zeros(gpu_rows, 3, 24, dtype=torch.bfloat16, device=DEVICE)
    dev_v = torch.zeros_like(dev_k)
    k = torch.randn(6, 3, 24, generator=g).bfloat16().to(DEVICE)
    v = torch.randn(6, 3, 24, generator=g).bfloat16().to(DEVICE)
    loc = torch.tensor([3, 21, 20, 49, 1, 35], device=DEVICE)
    store_to_host(k, v, loc, host_k, host_v, block_n=4, block_e=32, homes=homes, home_kv=(dev_k, dev_v))
    at_home = loc <= homes
    assert torch.equal(dev_k[loc[at_home]], k[at_home]) and torch.equal(dev_v[loc[at_home]], v[at_home])
    away = loc[~at_home] - homes
    assert torch.equal(host_k[away], k[~at_home]) and torch.equal(host_v[away], v[~at_home])
    assert int((dev_k != 0).any(-1).any(-1).sum()) == 3 and int((host_k != 0).any(-1).any(-1).sum()) == 3
    # a cached prefix over both tiers, into staging rows past the homes
    staging = torch.tensor([30, 31, 32, 33, 34, 35], device=DEVICE)
    load_from_host(host_k, host_v, loc, dev_k, dev_v, staging, block_n=4, block_e=32, homes=homes)
    assert torch.equal(dev_k[staging], k) and torch.equal(dev_v[staging], v)


def test_hot_buffers_own_disjoint_slots_and_reset_per_request() -> None:
    from a2ats_sglang.runtime.tiered.hot_buffers import HotBuffers

    slots = HotBuffers(2, max_reqs=3, num_kv_heads=2, hot_tokens=8, base_slot=100, device=DEVICE).slots.cpu()
    assert slots.unique().numel() == 24 and int(slots.min()) == 100 and int(slots.max()) == 123
    hb = HotBuffers(num_layers=2, max_reqs=3, num_kv_heads=2, hot_tokens=8, base_slot=0, device=DEVICE)
    o = Offload(hot_size=8)  # its host pool and 29 GPU slots
    picks = torch.tensor([[0, 5, 9], [1, 2, 3]], dtype=torch.int32, device=DEVICE)
    dev_k, dev_v = o.dev_k.to(DEVICE), o.dev_v.to(DEVICE)
    for _ in range(2):  # request 0 on pool row 1; the second time every pick is a hit
        hb.fetch(0, picks, torch.tensor([3, 3], dtype=torch.int32, device=DEVICE), torch.zeros(2, 100, device=DEVICE),
                 o.req_to_token.to(DEVICE), torch.tensor([1], device=DEVICE), torch.tensor([90], device=DEVICE),
                 o.host_k.to(DEVICE), o.host_v.to(DEVICE), dev_k, dev_v,
                 torch.tensor([0, 3, 6], dtype=torch.int32, device=DEVICE), torch.zeros(6, dtype=torch.int32, device=DEVICE),
                 torch.zeros(2, 8, dtype=torch.int32, device=DEVICE), torch.zeros(2, 2, dtype=torch.int32, device=DEVICE))
    assert hb.counters.tolist() == [6, 6]
    assert int((hb.tokens[0, 1] >= 0).sum()) == 6 and bool((hb.tokens[1] == -1).all()), "layer 1 untouched"
    hb.reset(torch.tensor([1], device=DEVICE))
    assert bool((hb.tokens[:, 1] == -1).all()) and bool((hb.hand[:, 1] == 0).all())


def test_hot_buffers_refuse_a_top_k_wider_than_themselves() -> None:
    from a2ats_sglang.runtime.tiered.hot_buffers import HotBuffers

    hb = HotBuffers(1, 2, 2, hot_tokens=8, base_slot=0, device=DEVICE)
    picks = torch.zeros(2, 9, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="hot buffers of 8 tokens cannot hold a top-K 9 wide"):
        hb.fetch(0, picks, *([None] * 13))
