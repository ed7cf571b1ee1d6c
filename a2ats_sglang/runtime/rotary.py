"""RoPE rotations on the GPU for the decode step: un-rotate keys, build WRoPE queries.

The same math as :class:`a2ats_sglang.method.rope.RopeSpec` (a test checks they agree), with
the frequencies computed once so the per-layer work inside the decode CUDA graph is a few
elementwise ops.
"""

from __future__ import annotations

import torch

from a2ats_sglang.method.rope import RopeSpec


class DeviceRotary:
    def __init__(self, spec: RopeSpec, device: torch.device | str) -> None:
        self.spec = spec
        self.inv_freq = spec.inv_freq(device).float()  # [rotary_dim // 2]
        self.factor = spec.attention_factor

    def rotate(self, x: torch.Tensor, delta: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """``scale · R(delta) · x`` in fp32; ``x`` ``[n, ..., d]``, ``delta`` ``[n, ...]`` broadcast
        over the remaining head axes (``delta.dim()`` leading axes of ``x``). # like x, float32"""
        spec = self.spec
        angles = delta.float()[..., None] * self.inv_freq  # [*delta.shape, rot/2]
        while angles.dim() < x.dim():
            angles = angles.unsqueeze(-2)
        cos, sin = angles.cos(), angles.sin()
        xf = x.float()
        rot, rest = xf[..., : spec.rotary_dim], xf[..., spec.rotary_dim :]
        if spec.neox:
            half = spec.rotary_dim // 2
            x1, x2 = rot[..., :half], rot[..., half:]
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        if rest.shape[-1]:
            out = torch.cat((out, rest), dim=-1)
        return out * scale if scale != 1.0 else out

    def unrotate_keys(self, k_post: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Pre-RoPE keys ``[n, Hkv, d]`` from post-RoPE ones at positions ``pos`` ``[n]``."""
        return self.rotate(k_post, -pos.to(torch.int64), 1.0 / self.factor)

    def wrope_queries(self, q_post: torch.Tensor, pos: torch.Tensor, reps: torch.Tensor) -> torch.Tensor:
        """WRoPE query per distance bucket: ``s·R(rep − pos)·q``. ``q_post`` ``[bs, Hq, d]``,
        ``pos`` ``[bs]``, ``reps`` ``[nb]`` → ``[bs, nb, Hq, d]`` float32."""
        delta = reps[None, :] - pos.to(torch.int64)[:, None]  # [bs, nb]
        return self.rotate(q_post[:, None].expand(-1, reps.shape[0], -1, -1), delta, self.factor)
