"""Offload mode's KV pool: every write reaches the host pool at its logical slot; only an
extend's writes reach the GPU, at the staging slots of its tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from a2ats_sglang.runtime.tiered.host_pool import HostKVPool, HostPoolPlan, kv_bytes_per_token
from a2ats_sglang.runtime.tiered.staging import Staging

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    """The kernels write host memory asynchronously on a GPU."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def make_pool():
    from a2ats_sglang.runtime.tiered.pool import OffloadKVPool

    layers, heads, dim, logical = 2, 2, 16, 200
    host = HostKVPool(HostPoolPlan(logical, kv_bytes_per_token(layers, heads, dim, torch.bfloat16)), layers, heads, dim,
                      torch.bfloat16)  # pinned where there is a GPU: the kernels read it in place
    host.k.zero_()
    host.v.zero_()
    staging = Staging(logical, base_slot=1, size=20, max_reqs=8, context_len=64, device=DEVICE)
    pool = OffloadKVPool(host, staging, 32, page_size=1, dtype=torch.bfloat16, head_num=heads, head_dim=dim,
                         layer_num=layers, device=DEVICE, enable_memory_saver=False, start_layer=0, end_layer=layers)  # exclusive, as a server passes it
    return pool, host, staging


def test_extend_writes_host_and_staging_decode_writes_host_only() -> None:
    pool, host, staging = make_pool()
    g = torch.Generator().manual_seed(0)
    layer = SimpleNamespace(layer_id=1)
    loc = torch.tensor([150, 3, 77])
    gpu = staging.place(["r"], torch.tensor([4], device=DEVICE), [0], [3], loc.to(DEVICE)).cpu()
    k, v = (torch.randn(3, 2, 16, generator=g).bfloat16() for _ in range(2))
    pool.stage_writes = True
    pool.set_kv_buffer(layer, loc.to(DEVICE), k.to(DEVICE), v.to(DEVICE))
    sync()
    assert torch.equal(host.k[1, loc], k) and torch.equal(host.v[1, loc], v)
    assert torch.equal(pool.get_key_buffer(1)[gpu].cpu(), k) and torch.equal(pool.get_value_buffer(1)[gpu].cpu(), v)
    assert (host.k[0] == 0).all(), "other layers untouched"

    pool.stage_writes = False  # a decode step: the new token goes to the host only
    before = pool.get_key_buffer(1).clone()
    k2, v2 = (torch.randn(1, 2, 16, generator=g).bfloat16() for _ in range(2))
    pool.set_kv_buffer(layer, torch.tensor([199], device=DEVICE), k2.to(DEVICE), v2.to(DEVICE))
    sync()
    assert torch.equal(host.k[1, 199], k2[0]) and torch.equal(host.v[1, 199], v2[0])
    assert torch.equal(pool.get_key_buffer(1), before)
    assert pool.logical_slots == 200 and pool.get_key_buffer(1).shape[0] == 33, "the GPU holds far fewer slots"


def test_with_gpu_homes_every_write_lands_in_its_tokens_home() -> None:
    """Slots 1…60 homed in the GPU tensors (row = slot), the rest in host row slot − 60: an
    extend's GPU-homed tokens are written in place and read there by the prefill, its host-homed
    ones reach staging and then their host rows; a decode token goes to its home only."""
    from a2ats_sglang.runtime.tiered.pool import OffloadKVPool

    layers, heads, dim, homes, host_rows = 2, 2, 16, 60, 140
    host = HostKVPool(HostPoolPlan(host_rows, kv_bytes_per_token(layers, heads, dim, torch.bfloat16)), layers, heads,
                      dim, torch.bfloat16)
    host.k.zero_()
    host.v.zero_()
    staging = Staging(homes + host_rows, base_slot=homes + 1, size=20, max_reqs=8, context_len=64, device=DEVICE,
                      homes=homes)
    pool = OffloadKVPool(host, staging, homes + 32, homes=homes, page_size=1, dtype=torch.bfloat16, head_num=heads,
                         head_dim=dim, layer_num=layers, device=DEVICE, enable_memory_saver=False, start_layer=0,
                         end_layer=layers)
    assert pool.logical_slots == homes + host_rows
    pool.get_key_buffer(1).zero_()
    pool.get_value_buffer(1).zero_()
    g = torch.Generator().manual_seed(2)
    layer = SimpleNamespace(layer_id=1)
    loc = torch.tensor([150, 3, 77, 60])  # host, home, host, the last home
    gpu = staging.place(["r"], torch.tensor([4], device=DEVICE), [0], [4], loc.to(DEVICE)).cpu()
    home, away = loc <= homes, loc > homes
    assert torch.equal(gpu[home], loc[home]) and bool((gpu[away] > homes).all()), "homes in place, staging past them"
    assert torch.equal(staging.table[4, :4].cpu(), gpu), "what the prefill's attention reads"
    k, v = (torch.randn(4, 2, 16, generator=g).bfloat16() for _ in range(2))
    pool.stage_writes = True
    pool.set_kv_buffer(layer, loc.to(DEVICE), k.to(DEVICE), v.to(DEVICE))
    sync()
    dev_k, dev_v = pool.get_key_buffer(1).cpu(), pool.get_value_buffer(1).cpu()
    assert torch.equal(dev_k[gpu], k) and torch.equal(dev_v[gpu], v), "the prefill reads its rows"
    assert int((dev_k[homes + 1 :] != 0).any(-1).any(-1).sum()) == 2, "only the host-homed tokens were staged"
    assert torch.equal(dev_k[loc[home]], k[home]) and torch.equal(dev_v[loc[home]], v[home])
    assert torch.equal(host.k[1, loc[away] - homes], k[away]) and torch.equal(host.v[1, loc[away] - homes], v[away])
    assert int((host.k[1] != 0).any(-1).any(-1).sum()) == 2, "a GPU-homed token has no host row"

    pool.stage_writes = False  # decode tokens, one of each tier
    k2, v2 = (torch.randn(2, 2, 16, generator=g).bfloat16() for _ in range(2))
    pool.set_kv_buffer(layer, torch.tensor([12, 199], device=DEVICE), k2.to(DEVICE), v2.to(DEVICE))
    sync()
    assert torch.equal(pool.get_key_buffer(1)[12].cpu(), k2[0]) and torch.equal(host.k[1, 199 - homes], k2[1])
    assert torch.equal(pool.get_value_buffer(1)[12].cpu(), v2[0]) and torch.equal(host.v[1, 199 - homes], v2[1])


@pytest.mark.gpu
def test_extend_host_writes_run_on_a_side_stream_until_joined() -> None:
    """An extend's host writes are copied from staging on a side stream; join() makes the forward
    stream wait for them, so what it reads from the host pool next is the extend's K/V."""
    from a2ats_sglang.kernels.hot_buffer import load_from_host

    pool, host, staging = make_pool()
    g = torch.Generator().manual_seed(1)
    loc = torch.tensor([10, 11, 190, 5])
    staging.place(["r"], torch.tensor([2], device=DEVICE), [0], [4], loc.to(DEVICE))
    k, v = (torch.randn(4, 2, 16, generator=g).bfloat16() for _ in range(2))
    pool.stage_writes = True
    pool.set_kv_buffer(SimpleNamespace(layer_id=0), loc.to(DEVICE), k.to(DEVICE), v.to(DEVICE))
    assert pool.side_done is not None and len(pool.in_flight) == 2
    pool.join()
    assert pool.side_done is None and not pool.in_flight
    out_k, out_v = (torch.zeros(4, 2, 16, dtype=torch.bfloat16, device=DEVICE) for _ in range(2))
    load_from_host(*host.layer(0), loc.to(DEVICE), out_k, out_v, torch.arange(4, device=DEVICE))
    torch.cuda.current_stream().synchronize()  # the forward stream only
    assert torch.equal(out_k.cpu(), k) and torch.equal(out_v.cpu(), v)
    pool.stage_writes = False  # decode writes stay on the forward stream
    pool.set_kv_buffer(SimpleNamespace(layer_id=0), torch.tensor([7], device=DEVICE), k[:1].to(DEVICE), v[:1].to(DEVICE))
    assert pool.side_done is None
