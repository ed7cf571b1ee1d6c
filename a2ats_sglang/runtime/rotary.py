"""RoPE rotations on the GPU for the decode step: un-rotate keys, build WRoPE queries.

The same math as :class:`a2ats_sglang.method.rope.RopeSpec` (a test checks they agree). The
angle tables depend only on positions, so a decode step computes them once
(:meth:`DeviceRotary.tables`); every layer rotates its queries inside the lookup-table kernel
and its new keys inside the encode kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from a2ats_sglang.kernels.encode import Unrotate
from a2ats_sglang.method.rope import RopeSpec


class Tables(NamedTuple):
    cos: torch.Tensor  # [n, nb, rotary_dim / 2] float32
    sin: torch.Tensor


class DeviceRotary:
    def __init__(self, spec: RopeSpec, device: torch.device | str) -> None:
        self.spec = spec
        self.inv_freq = spec.inv_freq(device).float()  # [rotary_dim // 2]
        self.factor = spec.attention_factor

    def tables(self, delta: torch.Tensor) -> Tables:
        """Angle tables of rotations by ``delta`` ``[n, nb]`` positions (fp32, like the models)."""
        angles = delta.float()[..., None] * self.inv_freq
        return Tables(angles.cos(), angles.sin())

    def key_tables(self, positions: torch.Tensor) -> Tables:
        return self.tables(-positions.to(torch.int64)[:, None])

    def query_tables(self, positions: torch.Tensor, reps: torch.Tensor) -> Tables:
        return self.tables(reps[None, :] - positions.to(torch.int64)[:, None])

    def unrotate(self, tables: Tables) -> Unrotate:
        """What :func:`encode_keys` needs to un-rotate post-RoPE keys itself (``key_tables``)."""
        return Unrotate(tables.cos, tables.sin, self.spec.neox, 1.0 / self.factor)
