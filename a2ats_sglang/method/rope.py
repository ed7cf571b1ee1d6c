"""Rotary position embedding, read from a Hugging Face config, and Windowed RoPE.

The serving path only ever sees post-RoPE keys and queries (that is what SGLang's attention
backends receive), so everything A²ATS needs is expressed as rotations of post-RoPE vectors:

- ``unrotate(k_post, pos)`` recovers the pre-RoPE key (position-free, what the codebook codes);
- ``wrope_query(q_post, pos, b)`` is the query rotated as if every far key sat ``b`` positions
  behind it: ``q_w · k_pre`` approximates the true logit ``q_post · k_post`` at distance ``b``.

Frequencies follow transformers' ``ROPE_INIT_FUNCTIONS`` (default, linear, llama3, yarn); the
test suite checks them against transformers' own rotary embedding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedRopeError(ValueError):
    """The model's RoPE variant cannot be expressed as a position-independent rotation."""


@dataclass(frozen=True)
class RopeSpec:
    """Everything that defines a model's rotary embedding. Frozen, JSON-serialisable."""

    head_dim: int
    rotary_dim: int
    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position: int = 0  # llama3, yarn
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    attention_factor: float = 1.0  # yarn: cos/sin are scaled by it
    truncate: bool = True  # yarn
    neox: bool = True  # rotate_half layout (Llama, Qwen); False = interleaved pairs (GPT-J)

    def __post_init__(self) -> None:
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedRopeError(
                f"RoPE type {self.rope_type!r} is not supported (supported: "
                f"{', '.join(SUPPORTED_ROPE_TYPES)}); A²ATS needs a rotation that depends only on "
                "the position, so dynamic/longrope/mrope scalings cannot be un-rotated exactly"
            )
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
            raise UnsupportedRopeError(
                f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]"
            )

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, config: Any, neox: bool = True) -> RopeSpec:
        """Build from a transformers config object or its ``config.json`` dict.

        Reads both the transformers-5 ``rope_parameters`` and the older ``rope_scaling`` /
        ``rope_theta`` fields.
        """
        cfg = config_dict(config)
        if cfg.get("text_config"):  # multimodal wrappers keep the LM config inside
            cfg = {**config_dict(cfg["text_config"])}
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        params: dict[str, Any] = {}
        for key in ("rope_scaling", "rope_parameters"):
            value = cfg.get(key)
            if isinstance(value, Mapping):
                if "full_attention" in value and isinstance(value["full_attention"], Mapping):
                    value = value["full_attention"]
                params.update({k: v for k, v in value.items() if v is not None})
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        rope_type = params.get("rope_type", params.get("type", "default")) or "default"
        partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
        rotary_dim = int(head_dim * partial)
        max_pos = int(cfg.get("max_position_embeddings") or 0)
        original = int(
            cfg.get("original_max_position_embeddings")
            or params.get("original_max_position_embeddings")
            or max_pos
        )
        factor = params.get("factor")
        if factor is None:  # transformers (DeepSeek-style yarn): implied by the extension
            factor = (max_pos / original) if rope_type == "yarn" and max_pos and original else 1.0
        factor = float(factor)
        spec: dict[str, Any] = dict(
            head_dim=int(head_dim), rotary_dim=rotary_dim, theta=float(theta),
            rope_type=str(rope_type), factor=factor, neox=neox,
        )
        if rope_type == "llama3":
            spec.update(
                low_freq_factor=float(params["low_freq_factor"]),
                high_freq_factor=float(params["high_freq_factor"]),
                original_max_position=original,
            )
        elif rope_type == "yarn":
            spec.update(
                original_max_position=original,
                beta_fast=float(params.get("beta_fast") or 32.0),
                beta_slow=float(params.get("beta_slow") or 1.0),
                truncate=bool(params.get("truncate", True)),
                attention_factor=_yarn_attention_factor(params, factor),
            )
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RopeSpec:
        return cls(**dict(data))

    # -- frequencies ----------------------------------------------------------------------

    def inv_freq(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Per-pair angular frequency. # [rotary_dim // 2] float32"""
        dim = self.rotary_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
        inv = 1.0 / (self.theta**exponents)
        if self.rope_type == "linear":
            inv = inv / self.factor
        elif self.rope_type == "llama3":
            inv = _llama3_inv_freq(inv, self)
        elif self.rope_type == "yarn":
            inv = _yarn_inv_freq(self, device)
        return inv

    # -- rotations --------------------------------------------------------------------------

    def rotate(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Pure rotation ``R(delta)·x`` (no attention scaling).

        ``x``: ``[..., n, heads, head_dim]`` or ``[..., n, head_dim]``; ``delta``: ``[n]``
        (any integer, negative allowed). Angles are computed in fp32 like the models do.
        """
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"last dim {x.shape[-1]} != head_dim {self.head_dim}")
        angles = delta.to(torch.float32)[:, None] * self.inv_freq(x.device)  # [n, rot/2]
        while angles.dim() < x.dim():  # broadcast over head axes between n and head_dim
            angles = angles.unsqueeze(-2)
        cos, sin = angles.cos(), angles.sin()
        rot, rest = x[..., : self.rotary_dim].float(), x[..., self.rotary_dim :]
        if self.neox:
            half = self.rotary_dim // 2
            x1, x2 = rot[..., :half], rot[..., half:]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        return torch.cat((out.to(x.dtype), rest), dim=-1)

    def apply(self, x_pre: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """What the model does: ``attention_factor · R(pos) · x``."""
        return _scale(self.rotate(x_pre, pos), self.attention_factor)

    def unrotate(self, x_post: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`apply`: the pre-RoPE vector (exact up to rounding)."""
        return _scale(self.rotate(x_post, -pos), 1.0 / self.attention_factor)

    def wrope_query(self, q_post: torch.Tensor, pos: torch.Tensor, b: int) -> torch.Tensor:
        """Windowed-RoPE query ``s·R(b − pos)·q_post`` (``s`` = attention factor).

        ``wrope_query(q, i, b) · unrotate(k, j)`` equals the true logit ``q · k`` exactly when
        ``i − j = b``; A²ATS uses it to score every far key as if it sat ``b`` positions away.
        """
        return _scale(self.rotate(q_post, b - pos), self.attention_factor)


def _scale(x: torch.Tensor, s: float) -> torch.Tensor:
    return x if s == 1.0 else x * s


def config_dict(config: Any) -> dict[str, Any]:
    """A config object or dict as a plain dict (transformers 5 keeps RoPE fields as attributes)."""
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        out = config.to_dict()
        # transformers 5 keeps rope parameters in attributes that to_dict may standardise
        for key in ("rope_parameters", "rope_scaling", "rope_theta", "head_dim"):
            if getattr(config, key, None) is not None and out.get(key) is None:
                out[key] = getattr(config, key)
        return out
    return dict(vars(config))


def _llama3_inv_freq(inv: torch.Tensor, spec: RopeSpec) -> torch.Tensor:
    low_wavelen = spec.original_max_position / spec.low_freq_factor
    high_wavelen = spec.original_max_position / spec.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / spec.factor, inv)
    smooth = (spec.original_max_position / wavelen - spec.low_freq_factor) / (
        spec.high_freq_factor - spec.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / spec.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_attention_factor(params: Mapping[str, Any], factor: float) -> float:
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    return _yarn_mscale(factor)


def _yarn_inv_freq(spec: RopeSpec, device: torch.device | str | None) -> torch.Tensor:
    dim, base = spec.rotary_dim, spec.theta

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(spec.original_max_position / (rotations * 2 * math.pi))) / (
            2 * math.log(base)
        )

    low, high = correction_dim(spec.beta_fast), correction_dim(spec.beta_slow)
    if spec.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = (torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)
    extrapolation_weight = 1 - ramp.clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device=device).float() / dim)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (spec.factor * pos_freqs)
    return interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight
