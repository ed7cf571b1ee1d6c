"""The fused rotation kernel (queries per bucket, keys) against RopeSpec, on every RoPE layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
    k_pre = torch.randn(n, hkv, spec.head_dim, generator=g)
    k_post = spec.apply(k_pre, pos)
    got = rot.unrotate_keys(k_post.to(DEVICE), rot.key_tables(pos.to(DEVICE)))
    # the reference on the same device: fp32 cos/sin of angles up to 7e4 rad differ between
    # CPU and CUDA libm by ~1e-3, which is not what this test is about
    torch.testing.assert_close(got, spec.unrotate(k_post.to(DEVICE), pos.to(DEVICE)), atol=2e-4, rtol=1e-4)

    buckets = DistanceBuckets.log2(64, 8192)
    q = torch.randn(n, hkv * group, spec.head_dim, generator=g)
    reps = torch.tensor(buckets.representatives)
    out = rot.wrope_queries(q.to(DEVICE), rot.query_tables(pos.to(DEVICE), reps.to(DEVICE)), hkv).cpu()
    nb = len(reps)
    # [Hkv, d, bs·nb·G] → [bs, nb, Hq, d]
    got_q = out.float().view(hkv, spec.head_dim, n, nb, group).permute(2, 3, 0, 4, 1).reshape(n, nb, hkv * group, -1)
    ref = buckets.queries(q.to(DEVICE), pos.to(DEVICE), spec).cpu()
    torch.testing.assert_close(got_q, ref, atol=0.01 * float(ref.abs().max()), rtol=0.01)  # bf16 output
