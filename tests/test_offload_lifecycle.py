"""Offload mode's per-step bookkeeping (:class:`a2ats_sglang.runtime.offload.Offload`) over a
request's life: chunked prefill keeps its staging across chunks, decode releases it, a request
that ends or is aborted during prefill releases it at the next extend, a new request starts with
an empty hot buffer, and the staging count returns to its start value."""

from __future__ import annotations

import pytest
import torch

from a2ats_sglang.runtime.host_pool import HostKVPool, HostPoolPlan, kv_bytes_per_token
from a2ats_sglang.runtime.memory import OffloadPlan
from a2ats_sglang.runtime.offload import Offload
from a2ats_sglang.runtime.staging import Staging

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_offload() -> Offload:
    from a2ats_sglang.runtime.offload_pool import OffloadKVPool

    layers, heads, dim = 2, 2, 16
    plan = OffloadPlan(logical_slots=199, max_running=3, hot_tokens=8, staging_tokens=40)
    host = HostKVPool(HostPoolPlan(200, kv_bytes_per_token(layers, heads, dim, torch.bfloat16)), layers, heads, dim,
                      torch.bfloat16)
    staging = Staging(200, plan.staging_base, plan.staging_tokens, plan.hot_buffers, 64, DEVICE)
    pool = OffloadKVPool(host, staging, plan.gpu_slots, page_size=1, dtype=torch.bfloat16, head_num=heads,
                         head_dim=dim, layer_num=layers, device=DEVICE, enable_memory_saver=False, start_layer=0,
                         end_layer=layers - 1)
    pool.plan = plan
    return Offload(pool, layers, width=8, device=DEVICE)


def extend(o: Offload, rids: list[str], rows: list[int], prefix: list[int], lens: list[int], first_slot: int) -> None:
    loc = torch.arange(first_slot, first_slot + sum(lens), device=DEVICE)
    o.begin_extend(rids, torch.tensor(rows, device=DEVICE), prefix, lens, loc)


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


def test_an_extend_of_an_unstaged_prefix_is_refused() -> None:
    o = make_offload()
    with pytest.raises(RuntimeError, match="extends a 7-token prefix that is not staged"):
        extend(o, ["x"], [1], [7], [3], 1)


def test_graph_replays_count_decode_steps_and_captures_do_not() -> None:
    o = make_offload()
    o.begin_decode(None, capture=True)  # SGLang capturing the decode graph
    assert o.metrics.steps == 0
    o.begin_decode(None)  # a replay: SGLang's replay view has no request ids
    o.begin_decode(["a"])  # an eager step
    assert o.metrics.steps == 2 and not o.pool.stage_writes
