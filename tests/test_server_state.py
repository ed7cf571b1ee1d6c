"""``/server_info``'s ``a2ats`` entry: what it says about a real decoder, and the patch that adds
it to each scheduler's internal state (and leaves other backends' states alone)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import msgspec

from a2ats_sglang.method.codebook import Codebook, ModelIdentity
from a2ats_sglang.method.wrope import DistanceBuckets
from a2ats_sglang.runtime.memory import OffloadPlan
from a2ats_sglang.runtime.server_state import describe
from a2ats_sglang.runtime.sparse_decode import Budget, SparseDecoder
from a2ats_sglang.patches import server_info

CONFIGS = Path(__file__).parent / "configs"


def decoder(slots: int = 101) -> SparseDecoder:
    config = json.loads((CONFIGS / "smollm2-135m.json").read_text())
    book = Codebook.random(ModelIdentity.from_hf_config(config), 64)
    return SparseDecoder(book, slots, 512, Budget(4, 16, 0.05, 8, 100), DistanceBuckets.single(16, 17), "max", "cpu")


def test_gpu_resident_state_counts_the_codes_and_the_codebook() -> None:
    dec = decoder()
    state = describe(dec, "/cb", kv_tokens=100, free_tokens=70)
    layers, heads = 30, 3  # SmolLM2-135M
    assert state["mode"] == "gpu"
    assert state["kv_capacity_tokens"] == {"gpu": 100, "host": 0}
    assert state["kv_used_tokens"] == 30
    assert state["codes_bytes_per_token"] == layers * heads * 2
    assert state["codes_bytes"] == 101 * layers * heads * 2
    d = 64
    assert state["codebook"] == {"path": "/cb", "codewords": 64,
                                 "bytes": layers * heads * 64 * (d * 4 + 4 + d * 2)}  # proj fp32, half norms, decoded bf16
    assert state["budget"] == {"sinks": 4, "window": 16, "ratio": 0.05, "min": 8, "max": 100,
                               "static_width": min(512, 4 + 16 + min(100, max(8, 26)))}
    assert "offload" not in state
    msgspec.msgpack.encode(state)  # what the scheduler sends back must serialise


def test_offload_state_gives_each_tier_and_the_hit_rate() -> None:
    plan = OffloadPlan(logical_slots=100, max_running=3, hot_tokens=40, staging_tokens=64)
    state = describe(decoder(), "/cb", 100, 100, plan, host_bytes=12345, staging_in_use=7,
                     offload_totals=(90, 10, 10, 5), bytes_per_copy=512)
    assert state["mode"] == "offload" and state["kv_capacity_tokens"] == {"gpu": 0, "host": 100}
    assert state["offload"] == {"host_pool_bytes": 12345, "staging_tokens": 64, "staging_used_tokens": 7,
                                "cache": "buffers", "cache_slots": 0,
                                "hot_buffers": 4, "hot_buffer_tokens": 40, "max_running_requests": 3, "decode_steps": 5,
                                "hot_hit_rate": 0.9, "fetched_bytes": 5120, "fetched_bytes_per_step": 1024.0}
    shared = describe(decoder(), "/cb", 100, 100, OffloadPlan(100, 30, 0, 64, cache_slots=5000),
                      offload_totals=(100, 300, 10, 5), bytes_per_copy=512)["offload"]
    assert shared["cache"] == "shared" and shared["cache_slots"] == 5000 and shared["hot_buffers"] == 0
    # picks served by a copy another request made this step are misses, not hits; bytes count the copies
    assert shared["hot_hit_rate"] == 0.25 and shared["fetched_bytes"] == 10 * 512
    tiers = describe(decoder(), "/cb", 100, 100, OffloadPlan(100, 30, 0, 64, cache_slots=5000, homes=60))
    assert tiers["kv_capacity_tokens"] == {"gpu": 60, "host": 40}  # GPU homes, then host rows
    idle = describe(decoder(), "/cb", 100, 100, plan)  # before the first decode step
    assert idle["offload"]["hot_hit_rate"] is None and idle["offload"]["fetched_bytes_per_step"] is None


def scheduler(backend: object) -> SimpleNamespace:
    return SimpleNamespace(tp_worker=SimpleNamespace(model_runner=SimpleNamespace(attn_backend=backend)),
                           token_to_kv_pool_allocator=SimpleNamespace(available_size=lambda: 42))


def original(sched, req):  # noqa: ANN001, ANN201 - the scheduler's own method
    return SimpleNamespace(internal_state={"max_total_num_tokens": 100})


def test_the_patch_adds_the_state_of_an_a2ats_backend() -> None:
    seen = []
    backend = SimpleNamespace(a2ats_state=lambda free: seen.append(free) or {"mode": "gpu"})
    out = server_info.add_state(original, scheduler(backend), None)
    assert out.internal_state == {"max_total_num_tokens": 100, "a2ats": {"mode": "gpu"}} and seen == [42]
    hybrid = SimpleNamespace(prefill_backend=object(), decode_backend=backend)  # --decode-attention-backend a2ats
    assert server_info.add_state(original, scheduler(hybrid), None).internal_state["a2ats"] == {"mode": "gpu"}
    # FlashInferAttnBackend (our base class) sets decode_backend = "fa2": the backend is still found
    backend.decode_backend = "fa2"
    assert server_info.add_state(original, scheduler(backend), None).internal_state["a2ats"] == {"mode": "gpu"}


def test_other_backends_are_left_alone() -> None:
    out = server_info.add_state(original, scheduler(SimpleNamespace()), None)
    assert out.internal_state == {"max_total_num_tokens": 100}


def test_a_backend_that_cannot_describe_itself_does_not_break_server_info() -> None:
    def broken(free: int) -> dict:
        raise AttributeError("no metrics yet")

    out = server_info.add_state(original, scheduler(SimpleNamespace(a2ats_state=broken)), None)
    assert out.internal_state == {"max_total_num_tokens": 100, "a2ats": {"error": "AttributeError: no metrics yet"}}
