"""RoPE spec vs transformers' own rotary embeddings, un-rotation and the WRoPE identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from a2ats_sglang.method.rope import RopeSpec, UnsupportedRopeError

CONFIGS = Path(__file__).parent / "configs"
MODELS = ["llama-3.1-8b", "llama-3.1-8b-linear", "qwen2.5-7b", "qwen2.5-7b-yarn", "smollm2-135m"]


VARIANTS = {  # RoPE scalings not covered by a shipped config, on top of one
    "llama-3.1-8b-linear": ("llama-3.1-8b", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
}


def load(name: str) -> dict:
    if name in VARIANTS:
        base, patch = VARIANTS[name]
        return {**load(base), **patch}
    return json.loads((CONFIGS / f"{name}.json").read_text())


def hf_rotary(cfg: dict):
    """transformers' rotary embedding module and apply function for this config."""
    from transformers import CONFIG_MAPPING
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    config = CONFIG_MAPPING[cfg["model_type"]](**cfg)
    module = modeling_qwen2 if cfg["model_type"] == "qwen2" else modeling_llama
    rotary_cls = getattr(module, "Qwen2RotaryEmbedding" if module is modeling_qwen2 else "LlamaRotaryEmbedding")
    return rotary_cls(config), module.apply_rotary_pos_emb


@pytest.mark.parametrize("name", MODELS)
def test_apply_matches_transformers(name: str) -> None:
    cfg = load(name)
    spec = RopeSpec.from_hf_config(cfg)
    rotary, apply_hf = hf_rotary(cfg)
    torch.manual_seed(0)
    n, heads, d = 64, 4, spec.head_dim
    pos = torch.randint(0, cfg["max_position_embeddings"], (n,))
    q = torch.randn(n, heads, d)
    k = torch.randn(n, 2, d)
    cos, sin = rotary(q, pos[None])  # [1, n, d]
    q_hf, k_hf = apply_hf(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    torch.testing.assert_close(spec.apply(q, pos), q_hf[0].transpose(0, 1), atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(spec.apply(k, pos), k_hf[0].transpose(0, 1), atol=2e-4, rtol=1e-4)
    assert spec.attention_factor == pytest.approx(float(rotary.attention_scaling))


@pytest.mark.parametrize("name", MODELS)
def test_unrotate_inverts_apply(name: str) -> None:
    spec = RopeSpec.from_hf_config(load(name))
    x = torch.randn(128, 3, spec.head_dim)
    pos = torch.randint(0, 130_000, (128,))
    torch.testing.assert_close(spec.unrotate(spec.apply(x, pos), pos), x, atol=1e-4, rtol=1e-4)
    # bf16 post-RoPE keys (what the KV cache holds) come back within bf16 rounding
    back = spec.unrotate(spec.apply(x, pos).bfloat16(), pos).float()
    assert (back - x).abs().max() < 0.05 * x.abs().max()


@pytest.mark.parametrize("name", MODELS)
def test_wrope_query_is_exact_at_distance_b(name: str) -> None:
    spec = RopeSpec.from_hf_config(load(name))
    b = 2048
    q_pre, k_pre = torch.randn(32, 1, spec.head_dim), torch.randn(32, 1, spec.head_dim)
    i = torch.randint(b, 20_000, (32,))
    q_post, k_post = spec.apply(q_pre, i), spec.apply(k_pre, i - b)
    exact = (q_post * k_post).sum(-1)
    approx = (spec.wrope_query(q_post, i, b) * spec.unrotate(k_post, i - b)).sum(-1)
    torch.testing.assert_close(approx, exact, atol=2e-3, rtol=1e-3)
    # at another distance WRoPE is only an approximation
    k_far = spec.apply(k_pre, i - 7 * b)
    off = (spec.wrope_query(q_post, i, b) * spec.unrotate(k_far, i - 7 * b)).sum(-1)
    assert not torch.allclose(off, (q_post * k_far).sum(-1), atol=1e-2)


def test_interleaved_layout_is_complex_multiplication() -> None:
    spec = RopeSpec(head_dim=8, rotary_dim=8, theta=10000.0, neox=False)
    x = torch.randn(5, 8)
    pos = torch.arange(5) * 17
    z = torch.view_as_complex(x.view(5, 4, 2))
    angle = pos[:, None].float() * spec.inv_freq()
    expected = torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).flatten(-2)
    torch.testing.assert_close(spec.apply(x, pos), expected, atol=1e-5, rtol=1e-5)


def test_partial_rotary_leaves_the_rest_untouched() -> None:
    cfg = {**load("smollm2-135m"), "partial_rotary_factor": 0.5}
    spec = RopeSpec.from_hf_config(cfg)
    assert spec.rotary_dim == 32
    x = torch.randn(4, spec.head_dim)
    out = spec.apply(x, torch.tensor([1, 2, 300, 4000]))
    torch.testing.assert_close(out[:, 32:], x[:, 32:])
    assert not torch.allclose(out[:, :32], x[:, :32])


@pytest.mark.parametrize(
    "scaling", [{"rope_type": "dynamic", "factor": 2.0}, {"type": "longrope", "short_factor": [1.0]}, {"type": "mrope"}]
)
def test_unsupported_rope_type_is_a_clear_error(scaling: dict) -> None:
    cfg = {**load("llama-3.1-8b"), "rope_scaling": scaling}
    with pytest.raises(UnsupportedRopeError, match="not supported"):
        RopeSpec.from_hf_config(cfg)


def test_spec_round_trips_through_dict() -> None:
    spec = RopeSpec.from_hf_config(load("llama-3.1-8b"))
    assert RopeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.rope_type == "llama3" and spec.factor == 8.0 and spec.theta == 500000.0
