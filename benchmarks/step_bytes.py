"""Bytes a decode step's attention must move through HBM, stage by stage, and its roofline.

What a kernel reads or writes at least once per layer (a gather that L2 serves twice still
counts once). Dividing by a stage's measured time gives the bandwidth it reaches; the step's
sum divided by the GPU's peak bandwidth is its roofline time. Stock is FlashInfer reading each
request's whole K and V. Byte counts are what today's kernels need, not an ideal: the top-K
reads the fp32 scores once per radix pass, for example.
"""

from __future__ import annotations

from dataclasses import dataclass

# HBM bandwidth from the data sheets (bytes/s), by the name torch reports
PEAK_BANDWIDTH = {"NVIDIA H200": 4.8e12, "NVIDIA H100 80GB HBM3": 3.35e12}


@dataclass(frozen=True)
class StepShape:
    batch: int
    context: int  # tokens per request
    kv_heads: int
    group: int  # query heads per kv head
    head_dim: int
    codebook_size: int
    buckets: int
    kept: int  # tokens attended per (request, kv head)
    encode_group: int  # positions encoded together once per group of steps
    kv_bytes: int = 2  # bf16
    code_bytes: int = 2  # int16
    first_pass_in_score: bool = True  # the score kernel counts the top-K's first radix pass


def stage_bytes(s: StepShape) -> dict[str, int]:
    """Bytes per layer of each A²ATS stage; ``encode_due`` on a step that completes an encode
    group (``encode_idle`` moves nothing: its programs find no key)."""
    rows = s.batch * s.kv_heads
    tokens = s.batch * s.context
    queries = s.batch * s.kv_heads * s.group
    table = rows * s.buckets * s.codebook_size * 4  # fp32, reduced over the group
    scores = rows * s.context * 4
    picks = rows * s.kept
    passes = 4 if s.first_pass_in_score else 5  # 8-bit radix histograms and the compaction, each reading every score
    return {
        "encode_due": rows * s.encode_group * (s.head_dim * s.kv_bytes + s.code_bytes)
                      + s.kv_heads * s.codebook_size * (s.head_dim + 1) * 4,  # keys, codes; projection, norms
        "encode_idle": 0,
        "lookup_table": s.kv_heads * s.codebook_size * s.head_dim * 2  # codewords, bf16
                        + queries * s.buckets * s.head_dim * 2 + table,
        "score": tokens * 4 + tokens * s.kv_heads * s.code_bytes + table + scores,  # slots, codes, table; scores
        "topk": passes * scores + picks * (4 + 4 + 4),  # scores; pick, its slot, its index
        "attention": picks * (2 * s.head_dim * s.kv_bytes + 4) + 2 * queries * s.head_dim * 2,
    }


def step_bytes(s: StepShape) -> int:
    """One layer of an average step: a request completes an encode group once every
    ``encode_group`` steps."""
    b = stage_bytes(s)
    encode = (b["encode_due"] + (s.encode_group - 1) * b["encode_idle"]) / s.encode_group
    return round(encode + sum(v for k, v in b.items() if not k.startswith("encode")))


def stock_bytes(s: StepShape) -> int:
    """One layer of FlashInfer's dense decode: every token's K and V, the queries and outputs."""
    kv = s.batch * s.context * (s.kv_heads * 2 * s.head_dim * s.kv_bytes + 4)  # K, V; one index per token
    return kv + 2 * s.batch * s.kv_heads * s.group * s.head_dim * 2


def minimum_bytes(s: StepShape) -> int:
    """What the method itself needs per layer: every token's codes and the kept tokens' K and V."""
    return s.batch * s.context * s.kv_heads * s.code_bytes + s.batch * s.kv_heads * s.kept * 2 * s.head_dim * s.kv_bytes


def gbps(nbytes: float, ms: float) -> float | None:
    return round(nbytes / ms / 1e6, 1) if ms > 0 else None
