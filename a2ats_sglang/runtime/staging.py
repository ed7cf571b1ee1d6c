"""Offload mode's prefill staging: GPU slots for K/V that must be on the GPU whole.

Dense prefill attends to a request's whole prompt, so while a prompt is being prefilled (over
several chunks) its tokens' K/V live in staging slots of the GPU KV tensor as well as in the
host pool. SGLang hands out logical slots; :class:`Staging` gives each new logical slot of a
prefilling request a GPU slot, keeps the logical→GPU map that K/V writes are translated with and
a ``req_to_token``-shaped table of GPU slots for the prefill's attention indices, and takes a
request's slots back when its prefill is over. Bookkeeping is on the host (extend metadata runs
outside CUDA graphs); the map and the table live on the GPU.
"""

from __future__ import annotations

import torch


class StagingFull(RuntimeError):
    """More prompt tokens in flight than the staging area holds."""


class Staging:
    def __init__(self, logical_slots: int, base_slot: int, size: int, max_reqs: int, context_len: int,
                 device: torch.device | str) -> None:
        self.base_slot, self.size = base_slot, size
        self.map = torch.full((logical_slots,), -1, dtype=torch.int32, device=device)  # logical → GPU slot
        self.table = torch.zeros(max_reqs, context_len, dtype=torch.int32, device=device)  # [row, position]
        self._free = torch.arange(base_slot, base_slot + size, dtype=torch.int64)  # host free list
        self._held: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # pool row → (logical, GPU) slots

    def available(self) -> int:
        return self._free.numel()

    def place(self, req_pool_idx: int, start: int, logical: torch.Tensor) -> torch.Tensor:
        """GPU slots for a prefilling request's new tokens, at positions ``start, start + 1, …``
        with logical slots ``logical`` (mapped and tabled from now on). → GPU slots"""
        n = logical.numel()
        if n > self._free.numel():
            raise StagingFull(
                f"prefill staging holds {self.size} tokens and {self.size - self._free.numel()} are in use; "
                f"{n} more do not fit"
            )
        gpu, self._free = self._free[:n], self._free[n:]
        logical = logical.to(torch.int64).cpu()
        gpu_dev = gpu.to(device=self.map.device, dtype=torch.int32)
        self.map[logical.to(self.map.device)] = gpu_dev
        self.table[req_pool_idx, start : start + n] = gpu_dev
        old = self._held.get(req_pool_idx)
        self._held[req_pool_idx] = (logical, gpu) if old is None else (torch.cat([old[0], logical]), torch.cat([old[1], gpu]))
        return gpu

    def release(self, req_pool_idx: int) -> int:
        """The request's prefill is over (or it was aborted): its staging slots are free again,
        its logical slots no longer mapped. → slots released"""
        held = self._held.pop(req_pool_idx, None)
        if held is None:
            return 0
        logical, gpu = held
        self.map[logical.to(self.map.device)] = -1
        self._free = torch.cat([self._free, gpu])
        return gpu.numel()

    def held_rows(self) -> list[int]:
        """Request rows holding staging slots (release those whose prefill is over)."""
        return list(self._held)

    def translate(self, logical: torch.Tensor) -> torch.Tensor:
        """GPU slots of staged logical slots (−1 for any not staged). Device op, no sync."""
        return self.map[logical.long()]
