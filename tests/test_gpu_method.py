"""The method library on CUDA (H100 node): same results as on CPU, deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang import calibrate as cli
from a2ats_sglang.default_model import smollm2_path
from a2ats_sglang.method.codebook import Codebook
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.selection import select_per_kv_head
from a2ats_sglang.method.vq import encode, kmeans, whitening_from_moment
from a2ats_sglang.method.wrope import DistanceBuckets, wrope_code_logits

pytestmark = pytest.mark.gpu


def test_kmeans_on_cuda_is_deterministic_and_agrees_with_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5000, 32, generator=g) * torch.linspace(2, 0.2, 32)
    a = kmeans(x.cuda(), 256, max_iters=20, seed=3)
    b = kmeans(x.cuda(), 256, max_iters=20, seed=3)
    assert torch.equal(a.centroids, b.centroids)
    cpu = kmeans(x, 256, max_iters=20, seed=3)
    # different RNG streams, so different seeds; the quality must match
    torch.testing.assert_close(a.inertia.cpu(), cpu.inertia, rtol=0.05, atol=0)


def test_encode_and_scores_on_cuda_match_cpu() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3000, 64, generator=g)
    w = whitening_from_moment((q.T @ q)[None].repeat(3, 1, 1))
    keys, cz = torch.randn(3, 2000, 64, generator=g), torch.randn(3, 512, 64, generator=g)
    codes = encode(keys, w.chol, cz)
    codes_gpu = encode(keys.cuda(), w.chol.cuda(), cz.cuda()).cpu()
    assert (codes == codes_gpu).float().mean() > 0.999  # ties can flip at fp32 rounding
    decoded = cz @ w.chol_inv
    q = torch.randn(2, 9, 64, generator=g)
    lengths = torch.tensor([2000, 1500])
    rope, buckets = RopeSpec(head_dim=64, rotary_dim=64, theta=1e5), DistanceBuckets.log2(64, 2048)
    s_cpu = wrope_code_logits(q, lengths - 1, codes.t(), decoded, rope, buckets, 0.125)
    s_gpu = wrope_code_logits(q.cuda(), (lengths - 1).cuda(), codes.t().cuda(), decoded.cuda(), rope, buckets, 0.125)
    torch.testing.assert_close(s_gpu.cpu(), s_cpu, atol=1e-3, rtol=1e-4)
    m_cpu = select_per_kv_head(s_cpu, lengths, 60, 3, 8, 64)
    m_gpu = select_per_kv_head(s_gpu, lengths.cuda(), 60, 3, 8, 64).cpu()
    assert (m_cpu == m_gpu).float().mean() > 0.999


def test_calibrate_cli_on_cuda(tmp_path: Path) -> None:
    model = str(smollm2_path())
    out = tmp_path / "cb"
    args = ["--model-path", model, "--out", str(out), "--tokens", "20000", "--uuid-tokens", "4000",
            "--codebook-size", "1024", "--iters", "20", "--device", "cuda"]
    assert cli.main(args) == 0
    book = Codebook.load(out, model_config=json.loads((Path(model) / "config.json").read_text()), codebook_size=1024)
    assert book.meta.calibration["keys_per_head"] == 24000
