"""The byte model of a decode step against the numbers the issue derives by hand (Llama-3.1-8B
shape: 32 layers, 8 kv heads of 128, GQA group 4)."""

from __future__ import annotations

import dataclasses

from benchmarks.step_bytes import StepShape, gbps, minimum_bytes, stage_bytes, step_bytes, stock_bytes

LAYERS = 32


def shape(batch: int = 1, context: int = 32768, kept: int = 1056) -> StepShape:
    return StepShape(batch, context, kv_heads=8, group=4, head_dim=128, codebook_size=4096, buckets=8,
                     kept=kept, encode_group=16)


def test_stock_reads_128_kib_per_context_token() -> None:
    s = shape()
    per_token = (stock_bytes(s) - 2 * 32 * 128 * 2) * LAYERS / s.context  # less the queries and outputs
    assert per_token == 128 * 1024 + 4 * LAYERS  # K and V of 8 heads in bf16, one int32 index per layer


def test_the_method_needs_a_code_per_kv_head_and_the_kept_kv() -> None:
    s = shape(kept=0)
    assert minimum_bytes(s) * LAYERS / s.context == 512  # a 16-bit code per (layer, kv head)
    kept = shape(kept=1000)
    assert minimum_bytes(kept) - minimum_bytes(s) == 8 * 1000 * 2 * 128 * 2


def test_stages_scale_with_what_they_read() -> None:
    one, many = stage_bytes(shape(1)), stage_bytes(shape(32))
    for stage in ("score", "topk", "attention"):  # per-request work
        assert many[stage] > 30 * one[stage], stage
    assert many["lookup_table"] < 32 * one["lookup_table"]  # the codewords are read once per batch
    assert one["encode_idle"] == 0 and one["encode_due"] > 0


def test_an_average_step_pays_one_encode_in_sixteen() -> None:
    s = shape(8)
    b = stage_bytes(s)
    rest = sum(v for k, v in b.items() if not k.startswith("encode"))
    assert step_bytes(s) == round(rest + b["encode_due"] / 16)


def test_gbps() -> None:
    assert gbps(4.8e9, 1.0) == 4800.0
    assert gbps(1, 0) is None


def test_roofline_of_a_measured_step() -> None:
    from benchmarks.decode_step import roofline

    s = shape(8)
    stages = {"encode_due": 1.0, "encode_idle": 0.2, "lookup_table": 0.5, "score": 1.0, "topk": 2.0,
              "score_topk": 2.5, "attention": 0.5}
    out = roofline(s, LAYERS, {"a2ats_stages_ms": stages, "a2ats_ms": 4.0, "stock_ms": 8.0}, "NVIDIA H200")
    apart = stage_bytes(dataclasses.replace(s, first_pass_in_score=False))  # timed alone: five passes
    assert out["a2ats_stages_bytes"]["topk"] == apart["topk"] * LAYERS
    assert out["a2ats_stages_gbps"]["topk"] == round(apart["topk"] * LAYERS / 2.0 / 1e6, 1)
    fused = stage_bytes(s)  # the serving pair reads the scores once less
    assert fused["topk"] == apart["topk"] - 8 * 32768 * 8 * 4
    assert out["a2ats_stages_bytes"]["score_topk"] == (fused["score"] + fused["topk"]) * LAYERS
    assert "encode_idle" not in out["a2ats_stages_gbps"]  # moves nothing
    assert out["a2ats_roofline_ms"] == round(step_bytes(s) * LAYERS / 4.8e12 * 1e3, 4)
    assert out["a2ats_vs_roofline"] == round(4.0 / out["a2ats_roofline_ms"], 2)
    assert "a2ats_roofline_ms" not in roofline(s, LAYERS, {"a2ats_stages_ms": stages, "a2ats_ms": 4.0, "stock_ms": 8.0},
                                               "some other GPU")


def test_kernel_times_split_the_top_k_passes_by_launch_rank() -> None:
    """Two replays of two layers: each layer launches score, passes 1-3 and the compaction; the
    passes share one kernel name and are told apart by their rank in the layer."""
    from benchmarks.decode_step import per_kernel

    layer = [("_score_kernel", 10.0), ("_split_hist_kernel", 4.0), ("_split_hist_kernel", 2.0),
             ("_split_hist_kernel", 1.0), ("_split_compact_kernel", 3.0)]
    launches, t = [], 0.0
    for _ in range(2 * 2):  # replays × layers
        for name, us in layer:
            launches.append((name, t, us))
            t += us
    launches.reverse()  # whatever order the profiler lists them in, the start times decide
    got = per_kernel(launches, iters=2)
    assert got == {"_score_kernel ×2": 20.0, "_split_hist_kernel pass 1 ×2": 8.0, "_split_compact_kernel ×2": 6.0,
                   "_split_hist_kernel pass 2 ×2": 4.0, "_split_hist_kernel pass 3 ×2": 2.0}
