"""RoPE inside other kernels: which dimension each one rotates with, at which frequency.

``y = scale · R(θ) · x`` per dimension: ``y_d = (x_d·cos θ_f + sign·x_pair·sin θ_f)·scale``, with
``cos``/``sin`` of the angles from tables the decode step computes once for every layer.
Dimensions past ``rotary_dim`` (partial rotary) are only scaled. The encode kernel un-rotates
keys with it and the lookup-table kernel builds WRoPE queries with it, each on the tile it
reads: no rotated copy is written.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def rope_pairs(d, rot_half, NEOX: tl.constexpr):
    """For each dimension ``d``: the dimension it rotates with, its frequency index, and the
    sign of the partner's term (``y = x·cos + sign·x_pair·sin``). Neox pairs ``i`` with
    ``i + rot/2``; the interleaved (GPT-J) layout pairs ``2i`` with ``2i + 1``."""
    if NEOX:
        first = d < rot_half
        pair = tl.where(first, d + rot_half, d - rot_half)
        freq = tl.where(first, d, d - rot_half)
        sign = tl.where(first, -1.0, 1.0)
    else:
        even = (d % 2) == 0
        pair = tl.where(even, d + 1, d - 1)
        freq = d // 2
        sign = tl.where(even, -1.0, 1.0)
    return pair, freq, sign
