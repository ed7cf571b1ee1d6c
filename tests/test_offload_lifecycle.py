"""Offload mode's per-step bookkeeping (:class:`a2ats_sglang.runtime.tiered.store.TieredStore`) over a
request's life: chunked prefill keeps its staging across chunks, decode releases it, a request
that ends or is aborted during prefill releases it at the next extend, a new request starts with
an empty hot buffer, and the staging count returns to its start value."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.runtime.tiered.host_pool import HostKVPool, HostPoolPlan, kv_bytes_per_token
from a2ats_sglang.runtime.memory import OffloadPlan
from a2ats_sglang.runtime.tiered.store import TieredStore
from a2ats_sglang.runtime.tiered.staging import Staging, StagingFull

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def loaded(monkeypatch):  # noqa: ANN201
    """Cached-prefix tokens the extends since the last call copied back from the host pool, read
    from the copies themselves (each layer's must move the same tokens)."""
    from a2ats_sglang.runtime.tiered import store as offload

    calls: list[int] = []
    real = offload.load_from_host

    def counting(host_k, host_v, logical, *rest, **kwargs):  # noqa: ANN001, ANN202
        calls.append(logical.numel())
        return real(host_k, host_v, logical, *rest, **kwargs)

    monkeypatch.setattr(offload, "load_from_host", counting)

    def take() -> int:
        layers = 2  # make_offload's
        assert len(calls) % layers == 0 and len(set(calls)) <= 1, calls
        n = sum(calls) // layers
        calls.clear()
        return n

    return take


def make_offload() -> TieredStore:
    from a2ats_sglang.runtime.tiered.pool import OffloadKVPool

    layers, heads, dim = 2, 2, 16
    plan = OffloadPlan(logical_slots=199, max_running=3, hot_tokens=8, staging_tokens=40)
    host = HostKVPool(HostPoolPlan(200, kv_bytes_per_token(layers, heads, dim, torch.bfloat16)), layers, heads, dim,
                      torch.bfloat16)
    staging = Staging(200, plan.staging_base, plan.staging_tokens, plan.hot_buffers, 64, DEVICE)
    pool = OffloadKVPool(host, staging, plan.gpu_slots, page_size=1, dtype=torch.bfloat16, head_num=heads,
                         head_dim=dim, layer_num=layers, device=DEVICE, enable_memory_saver=False, start_layer=0,
                         end_layer=layers)  # exclusive, as a server passes it
    pool.plan = plan
    return TieredStore(pool, layers, width=8, device=DEVICE)


def extend(o: TieredStore, rids: list[str], rows: list[int], prefix: list[int], lens: list[int], first_slot: int,
           req_to_token: torch.Tensor | None = None) -> None:
    loc = torch.arange(first_slot, first_slot + sum(lens), device=DEVICE)
    if req_to_token is None:
        req_to_token = torch.zeros(4, 64, dtype=torch.int32, device=DEVICE)
    o.begin_extend(rids, torch.tensor(rows, device=DEVICE), prefix, lens, loc, req_to_token)


def test_staging_follows_prefill_and_hot_buffers_start_empty() -> None:
    o = make_offload()
    start = o.staging.available()
    o.hot.tokens.fill_(5)  # leftovers of earlier requests in every row
    extend(o, ["a", "b"], [1, 2], [0, 0], [10, 4], 1)  # a's first chunk, b's whole prompt
    assert o.pool.stage_writes and sorted(o.staging.held()) == ["a", "b"]
    assert bool((o.hot.tokens[:, [1, 2]] == -1).all()) and bool((o.hot.tokens[:, [0, 3]] == 5).all())
    assert o.staging.table[1, :10].tolist() == o.staging.translate(torch.arange(1, 11, device=DEVICE)).tolist()

    o.begin_decode(["b"])  # b decodes; a is between chunks
    assert not o.pool.stage_writes and o.staging.held() == ["a"] and o.staging.in_use() == 10
    o.hot.tokens[:, 1] = 3  # a's hot rows must survive its next chunk
    extend(o, ["a"], [1], [10], [6], 20)
    assert bool((o.hot.tokens[:, 1] == 3).all()), "a continuing prompt is not a new request"
    assert o.staging.table[1, 10:16].tolist() == o.staging.translate(torch.arange(20, 26, device=DEVICE)).tolist()
    assert o.staging.in_use() == 16

    # a's prefill ended and it finished at once (max_new_tokens 1); row 1 goes to c
    extend(o, ["c"], [1], [0], [3], 40)
    assert o.staging.held() == ["c"] and o.staging.in_use() == 3
    assert bool((o.hot.tokens[:, 1] == -1).all()), "a new request in a reused row starts empty"
    o.begin_decode(["c"])
    assert o.staging.available() == start and bool((o.staging.map == -1).all())


def test_a_cached_prefix_is_staged_from_the_host_pool_layer_by_layer(loaded) -> None:  # noqa: ANN001
    """Two new requests share a cached 7-token prefix (a radix hit) the scheduler did not match
    to one tree node: each gets staging slots for it, every layer's prefix K/V are copied there
    from the host pool, the positions table names them ahead of the new tokens, the logical→GPU
    map (new tokens only) leaves them out, and release gives every slot back."""
    o = make_offload()
    start = o.staging.available()
    g = torch.Generator().manual_seed(0)
    for layer in range(2):
        k, v = o.pool.host.layer(layer)
        k.copy_(torch.randn(k.shape, generator=g).to(k.dtype))
        v.copy_(torch.randn(v.shape, generator=g).to(v.dtype))
    req_to_token = torch.zeros(4, 64, dtype=torch.int32, device=DEVICE)
    shared = torch.tensor([50, 51, 52, 90, 91, 7, 8], dtype=torch.int32)
    req_to_token[1, :7] = shared.to(DEVICE)
    req_to_token[2, :7] = shared.to(DEVICE)
    o.hot.tokens.fill_(5)
    extend(o, ["x", "y"], [1, 2], [7, 7], [3, 2], 100, req_to_token)
    assert o.staging.in_use() == 7 + 3 + 7 + 2 and bool((o.hot.tokens[:, [1, 2]] == -1).all())
    mapped = (o.staging.map >= 0).nonzero().flatten().tolist()
    assert mapped == list(range(100, 105)), "only the new tokens' logical slots are mapped"
    assert loaded() == 14, "no scheduler keys: each request stages its own copy"
    for layer in range(2):
        o.wait_layer(layer)  # the forward stream waits for the layer's copy (on a GPU)
        dev_k, dev_v = o.pool.get_kv_buffer(layer)
        host_k, host_v = o.pool.host.layer(layer)
        for row in (1, 2):
            gpu = o.staging.table[row, :7].long()
            assert torch.equal(dev_k[gpu].cpu(), host_k[shared.long()].cpu())
            assert torch.equal(dev_v[gpu].cpu(), host_v[shared.long()].cpu())
    assert set(o.staging.table[1, 7:10].tolist()) == set(o.staging.translate(torch.arange(100, 103, device=DEVICE)).tolist())
    o.begin_decode(["x", "y"])
    assert o.staging.available() == start and bool((o.staging.map == -1).all())


def make_tiered(homes: int = 60) -> TieredStore:
    """A store with GPU homes: logical slots 1…60 in the GPU tensors, 61…199 in host rows 1…139."""
    from a2ats_sglang.runtime.tiered.pool import OffloadKVPool

    layers, heads, dim = 2, 2, 16
    plan = OffloadPlan(logical_slots=199, max_running=3, hot_tokens=0, staging_tokens=40, cache_slots=200, homes=homes)
    host = HostKVPool(HostPoolPlan(plan.host_rows, kv_bytes_per_token(layers, heads, dim, torch.bfloat16)), layers,
                      heads, dim, torch.bfloat16)
    staging = Staging(200, plan.staging_base, plan.staging_tokens, plan.hot_buffers, 64, DEVICE, homes=homes)
    pool = OffloadKVPool(host, staging, plan.gpu_slots, homes=homes, page_size=1, dtype=torch.bfloat16, head_num=heads,
                         head_dim=dim, layer_num=layers, device=DEVICE, enable_memory_saver=False, start_layer=0,
                         end_layer=layers)
    pool.plan = plan
    return TieredStore(pool, layers, width=8, device=DEVICE)


def test_with_gpu_homes_a_cached_prefix_is_staged_from_both_tiers(loaded) -> None:  # noqa: ANN001
    """A cached prefix whose slots lie in both tiers: each token is read from its home (its GPU
    row or its host row) into staging, and the encoders read keys from the same places."""
    o = make_tiered()
    homes = o.pool.homes
    assert o.homes == homes and o.keys(0).data_ptr() == o.pool.get_key_buffer(0).data_ptr()
    assert o.host_keys(0).data_ptr() == o.pool.host.layer(0)[0].data_ptr()  # what the encoders read
    g = torch.Generator().manual_seed(3)
    truth = {}
    for layer in range(2):  # every slot's K/V where it lives
        tk = torch.randn(200, 2, 16, generator=g).bfloat16().to(DEVICE)
        tv = torch.randn(200, 2, 16, generator=g).bfloat16().to(DEVICE)
        truth[layer] = (tk, tv)
        dev_k, dev_v = o.pool.get_kv_buffer(layer)
        dev_k[1 : homes + 1], dev_v[1 : homes + 1] = tk[1 : homes + 1], tv[1 : homes + 1]
        host_k, host_v = o.pool.host.layer(layer)
        host_k[1:], host_v[1:] = tk[homes + 1 :].to(host_k.device), tv[homes + 1 :].to(host_v.device)
    shared = torch.tensor([50, 151, 3, 60, 61, 199, 8], dtype=torch.int32)  # homed and not
    req_to_token = torch.zeros(4, 64, dtype=torch.int32, device=DEVICE)
    req_to_token[1, :7] = shared.to(DEVICE)
    extend(o, ["x"], [1], [7], [3], 100, req_to_token)
    assert loaded() == 7
    for layer in range(2):
        o.wait_layer(layer)
        dev_k, dev_v = o.pool.get_kv_buffer(layer)
        gpu = o.staging.table[1, :7].long()
        assert bool((gpu > homes).all()), "staging lies past the homes"
        tk, tv = truth[layer]
        assert torch.equal(dev_k[gpu], tk[shared.long().to(DEVICE)]) and torch.equal(dev_v[gpu], tv[shared.long().to(DEVICE)])
    o.begin_decode(["x"])
    assert o.staging.available() == 40


def test_requests_sharing_a_prefix_stage_it_once_until_the_last_is_done(loaded) -> None:  # noqa: ANN001
    o = make_offload()
    start = o.staging.available()
    req_to_token = torch.zeros(4, 64, dtype=torch.int32, device=DEVICE)
    req_to_token[1:4, :7] = torch.tensor([50, 51, 52, 90, 91, 7, 8], dtype=torch.int32, device=DEVICE)
    doc = ("node", 7)
    o.staging.prefix_keys.update({"x": doc, "y": doc})  # the scheduler saw both match one tree node
    extend(o, ["x", "y"], [1, 2], [7, 7], [3, 2], 100, req_to_token)
    assert o.staging.in_use() == 7 + 3 + 2 and not o.staging.prefix_keys
    assert loaded() == 7, "loaded once"
    assert o.staging.table[1, :7].tolist() == o.staging.table[2, :7].tolist()
    o.begin_decode(["x"])
    assert o.staging.in_use() == 7 + 2, "y still holds the prefix"
    o.staging.prefix_keys["z"] = doc  # a later request over the same document: y's staging is reused
    extend(o, ["z"], [3], [7], [4], 110, req_to_token)
    assert loaded() == 0 and o.staging.in_use() == 7 + 4, "y's prefill ended; z holds the prefix now"
    assert o.staging.table[3, :7].tolist() == o.staging.table[2, :7].tolist()
    o.begin_decode(["z"])
    assert o.staging.available() == start and not o.staging.held()


def test_an_extend_beyond_staging_is_refused_before_anything_is_placed() -> None:
    o = make_offload()
    req_to_token = torch.zeros(4, 64, dtype=torch.int32, device=DEVICE)
    with pytest.raises(StagingFull, match="prefill staging has 40 free slots; this extend needs 41"):
        extend(o, ["x", "y"], [1, 2], [30, 0], [5, 6], 100, req_to_token)
    assert o.staging.available() == 40 and not o.staging.held()


def test_graph_replays_count_decode_steps_and_captures_do_not() -> None:
    o = make_offload()
    o.begin_decode(None, capture=True)  # SGLang capturing the decode graph
    assert o.metrics.steps == 0
    o.begin_decode(None)  # a replay: SGLang's replay view has no request ids
    o.begin_decode(["a"])  # an eager step
    assert o.metrics.steps == 2 and not o.pool.stage_writes
