"""Grid sizing: how many SMs a launch has to fill (the interpreter on the CPU pretends 8)."""

from __future__ import annotations

from functools import lru_cache

import torch


def sm_count(t: torch.Tensor) -> int:
    """Streaming multiprocessors of ``t``'s GPU."""
    return _sm_count(t.device.index or 0) if t.is_cuda else 8


@lru_cache(maxsize=None)
def _sm_count(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count
