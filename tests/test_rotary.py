"""The rotations inside the kernels (keys in the encode kernel, queries per bucket in the
lookup-table kernel) against RopeSpec, on every RoPE layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.kernels.encode import encode_keys, encode_projection
from a2ats_sglang.kernels.lut import folded_lookup_table
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.wrope import DistanceBuckets
from a2ats_sglang.runtime.rotary import DeviceRotary

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = Path(__file__).parent / "configs"


def specs() -> list[RopeSpec]:
    out = [RopeSpec.from_hf_config(json.loads((CONFIGS / f"{n}.json").read_text()))
           for n in ("smollm2-135m", "llama-3.1-8b", "qwen2.5-7b-yarn")]
    out.append(RopeSpec(head_dim=32, rotary_dim=16, theta=10000.0, neox=False))  # interleaved, partial
    out.append(RopeSpec(head_dim=32, rotary_dim=24, theta=500.0, neox=True))  # neox, partial
    return out


@pytest.mark.parametrize("spec", specs(), ids=lambda s: f"{s.rope_type}-{s.head_dim}-{s.rotary_dim}-{'neox' if s.neox else 'gptj'}")
def test_keys_and_queries_match_ropespec(spec: RopeSpec) -> None:
    g = torch.Generator().manual_seed(0)
    rot = DeviceRotary(spec, DEVICE)
    n, hkv, group = 5, 2, 3
    pos = torch.tensor([0, 7, 300, 4095, 70000])
    # keys: the encode kernel un-rotates post-RoPE keys itself; its codes must equal those of
    # keys un-rotated by RopeSpec (on the same device: fp32 cos/sin of angles up to 7e4 rad
    # differ between CPU and CUDA libm by ~1e-3, which is not what this test is about)
    many = torch.randint(0, 70000, (300,), generator=g)
    k_many = spec.apply(torch.randn(300, hkv, spec.head_dim, generator=g), many).to(DEVICE)
    chol = torch.eye(spec.head_dim).expand(hkv, -1, -1).contiguous().to(DEVICE)
    proj, half = encode_projection(chol, torch.randn(hkv, 64, spec.head_dim, generator=g).to(DEVICE))
    loc = torch.arange(300, device=DEVICE)
    fused = torch.zeros(300, hkv, dtype=torch.int16, device=DEVICE)
    encode_keys(k_many, proj, half, loc, fused, unrotate=rot.unrotate(rot.key_tables(many.to(DEVICE))))
    plain = torch.zeros_like(fused)
    encode_keys(spec.unrotate(k_many, many.to(DEVICE)).contiguous(), proj, half, loc, plain)
    assert (fused == plain).float().mean() > 0.99  # a wrong rotation changes most codes

    # queries: the lookup-table kernel rotates them per bucket; against unit codewords (group 1)
    # its table is each rotated query's components
    buckets = DistanceBuckets.log2(64, 8192)
    q = torch.randn(n, hkv * group, spec.head_dim, generator=g).bfloat16()
    reps = torch.tensor(buckets.representatives)
    tables = rot.query_tables(pos.to(DEVICE), reps.to(DEVICE))
    unit = torch.eye(spec.head_dim).bfloat16().expand(hkv * group, -1, -1).contiguous().to(DEVICE)
    got_q = folded_lookup_table(unit, q.to(DEVICE), *tables, 1, spec.neox, rot.factor).cpu()  # [bs·nb, Hq, d]
    ref = buckets.queries(q.float().to(DEVICE), pos.to(DEVICE), spec).cpu().flatten(0, 1)
    torch.testing.assert_close(got_q, ref, atol=0.01 * float(ref.abs().max()), rtol=0.01)  # bf16 queries
