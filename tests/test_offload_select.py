"""Offload mode changes where the bytes live, not what is computed: over decode steps, the
tokens whose K/V an offload-mode step hands to attention (GPU hot-buffer slots filled from the
host pool) are exactly the ones the GPU-resident path picks, with the same K/V; so with GPU homes,
where a step reads the homed picks in place and only the rest through the shared cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.method.codebook import Codebook, ModelIdentity
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.wrope import DistanceBuckets
from a2ats_sglang.runtime.tiered.hot_buffers import HotBuffers
from a2ats_sglang.runtime.kv_store import KVStore
from a2ats_sglang.runtime.tiered.store import fetch_picks
from a2ats_sglang.runtime.tiered.shared_cache import SharedCache
from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecodeBuffers, SparseDecoder

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = Path(__file__).parent / "configs"


class HostStore(KVStore):
    """The tiered store's decode side alone: one layer's host pool and GPU slots, fetched as
    :class:`~a2ats_sglang.runtime.tiered.store.TieredStore` fetches (without its pool and staging)."""

    fetches = True

    def __init__(self, hot, host_kv, dev_kv) -> None:
        super().__init__(None)
        self.hot, self.host_kv, self.dev_kv = hot, host_kv, dev_kv

    def resolve(self, layer_id, buffers, req_to_token, req_pool_indices, seq_lens) -> None:
        fetch_picks(self.hot, layer_id, buffers, req_to_token, req_pool_indices, seq_lens, self.host_kv, self.dev_kv)


# one hot buffer per request row; one cache for all; that cache with 250 of the 600 slots homed on the GPU
@pytest.mark.parametrize("cache", ["buffers", "shared", "tiered"])
def test_offload_step_attends_to_the_resident_paths_picks(cache: str) -> None:
    config = json.loads((CONFIGS / "smollm2-135m.json").read_text())
    config["num_hidden_layers"] = 1
    book = Codebook.random(ModelIdentity.from_hf_config(config), 64)
    m = book.meta.model
    hkv, dim = m.num_kv_heads, m.head_dim
    lens, slots, context = [300, 120], 600, 320
    dec = SparseDecoder(book, slots, context, Budget(2, 8, 0.1, 0, None), DistanceBuckets.log2(8, context), "max", DEVICE)
    g = torch.Generator().manual_seed(0)
    rope = RopeSpec.from_dict(m.rope)
    host_k = torch.zeros(slots, hkv, dim, dtype=torch.bfloat16)
    host_v = torch.randn(slots, hkv, dim, generator=g).bfloat16()
    req_to_token = torch.zeros(3, context, dtype=torch.int32)
    perm = torch.randperm(slots - 1, generator=g) + 1
    start = 0
    for r, n in enumerate(lens):  # requests on pool rows 1 and 2, keys of up to 310 positions
        loc = perm[start : start + n + 10]
        start += n + 10
        req_to_token[r + 1, : n + 10] = loc.int()
        k_pre = torch.randn(n + 10, hkv, dim, generator=g) * torch.linspace(3, 0.3, dim)
        host_k[loc] = rope.apply(k_pre, torch.arange(n + 10)).bfloat16()
        dec.encode(0, host_k[loc].to(DEVICE), loc.to(DEVICE), dec.rotary.key_tables(torch.arange(n + 10, device=DEVICE)))
    host_k, host_v, req_to_token = host_k.to(DEVICE), host_v.to(DEVICE), req_to_token.to(DEVICE)
    rpi = torch.tensor([1, 2], device=DEVICE)
    width = dec.width
    rows = len(lens) * hkv
    homes = 250 if cache == "tiered" else 0
    if cache == "buffers":
        hot = HotBuffers(1, 3, hkv, hot_tokens=width + 8, base_slot=1, device=DEVICE)
    else:
        hot = SharedCache(1, slots - homes, hkv, cells=3 * (width + 8) * hkv, base_cell=(homes + 1) * hkv, max_rows=rows,
                          width=width, device=DEVICE, homes=homes)
    dev_k = torch.zeros(homes + 1 + 3 * (width + 8), hkv, dim, dtype=torch.bfloat16, device=DEVICE)
    dev_v = torch.zeros_like(dev_k)
    dev_k[: homes + 1], dev_v[: homes + 1] = host_k[: homes + 1], host_v[: homes + 1]  # the GPU homes' K/V
    away_k, away_v = host_k[homes:].clone(), host_v[homes:].clone()  # host row r: slot homes + r
    if homes:
        away_k[0], away_v[0] = 0, 0  # the last home's row in the host pool is not its home
    store = HostStore(hot, (away_k, away_v), (dev_k, dev_v))
    in_place = 0
    hits = 0
    for step in range(4):  # each step one token longer
        seq_lens = torch.tensor([n + step for n in lens], device=DEVICE)
        hot.begin_step()
        q = torch.randn(len(lens), m.num_attention_heads, dim, generator=g).bfloat16().to(DEVICE)
        tables = dec.step_tables(seq_lens - 1, req_to_token, rpi)
        resident, offloaded = (SparseDecodeBuffers(2, hkv, context, width, 64, dec.num_buckets, DEVICE, fetch=fetch)
                               for fetch in (False, True))
        for buffers, mode in ((resident, None), (offloaded, store)):
            buffers.set_counts(seq_lens, dec.budget)
            dec.select(0, q, tables.queries, req_to_token, rpi, seq_lens, buffers, mode)
        indptr = resident.indptr.cpu()
        for r in range(rows):
            b, kv = divmod(r, hkv)
            a, z = int(indptr[r]), int(indptr[r + 1])
            assert z - a > 0
            want = [int(i) // hkv for i in resident.indices[a:z].cpu()]  # logical slots
            got = offloaded.indices[a:z].cpu().long()
            if cache != "buffers":  # a cell holds one (host row, kv head): its owner says which
                at_home = [i < hot.base_cell for i in got.tolist()]
                in_place += sum(at_home)
                keys = [i if h else int(hot.owner[0, i - hot.base_cell]) + homes * hkv for i, h in zip(got.tolist(), at_home)]
                assert keys == [w * hkv + kv for w in want], (step, r)  # the same tokens in the same order
                assert all(h == (w <= homes) for h, w in zip(at_home, want)), (step, r)  # homed ones in place
                rows_k, rows_v = dev_k.view(-1, dim).cpu(), dev_v.view(-1, dim).cpu()
                for i, w in zip(got.tolist(), want):
                    assert torch.equal(rows_k[i], host_k[w, kv].cpu()) and torch.equal(rows_v[i], host_v[w, kv].cpu())
                continue
            assert bool((got % hkv == kv).all())
            gpu = got // hkv
            # each GPU slot holds one picked token's K/V: match them back to logical slots
            held = hot.tokens[0, rpi[b], kv].cpu()
            slot_ids = hot.slots[rpi[b]].cpu()
            tokens = [int(held[(slot_ids == s).nonzero()[0, 0]]) for s in gpu.tolist()]
            logical = [int(req_to_token[rpi[b], t]) for t in tokens]
            assert logical == want, (step, r)  # the same tokens in the same order: attention's sums match
            for s, t in zip(gpu.tolist(), tokens):
                src = int(req_to_token[rpi[b], t])
                assert torch.equal(dev_k[s, kv].cpu(), host_k[src, kv].cpu())
                assert torch.equal(dev_v[s, kv].cpu(), host_v[src, kv].cpu())
        hits += int(offloaded.stats[:rows, 0].sum())
    assert hits > 0 and int(hot.counters[0]) == hits, "later steps find most picks resident"
    if cache != "buffers":
        assert (in_place > 0) == (homes > 0)
