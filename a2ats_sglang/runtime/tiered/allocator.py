"""SGLang's token allocator over two tiers, handing out GPU homes first.

Logical slots ``1 … gpu_homes`` are homed in rows of the GPU KV tensor (row = slot), the rest
in rows of the pinned host pool (row = slot − ``gpu_homes``): see
:class:`~a2ats_sglang.runtime.memory.OffloadPlan`. The scheduler admits against both tiers
together, since ``available_size`` counts every free slot.

SGLang 0.5.17's ``TokenToKVPoolAllocator`` appends freed slots behind the free list and sorts
only when the list runs dry (with ``need_sort``), so a freed GPU home would wait behind every
free host row. Here the free list stays sorted: freed slots collect in ``release_pages`` and are
merged in before the next allocation (a device merge of two sorted lists, O(free) like SGLang's
own ``torch.cat`` on free, no host synchronisation), so an allocation always takes the lowest
free slots, GPU homes first.
"""

from __future__ import annotations

import torch
from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator


def merge_sorted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The sorted union of ``a`` (sorted) and ``b`` (any order); their values are distinct
    (free slots). Each value's place is its index plus how many of the other list are below it."""
    if b.numel() == 0:
        return a
    b = torch.sort(b).values
    out = torch.empty(a.numel() + b.numel(), dtype=a.dtype, device=a.device)
    out[torch.arange(a.numel(), device=a.device) + torch.searchsorted(b, a)] = a
    out[torch.arange(b.numel(), device=b.device) + torch.searchsorted(a, b)] = b
    return out


class TieredAllocator(TokenToKVPoolAllocator):
    def __init__(self, size: int, gpu_homes: int, dtype: torch.dtype, device: str, kvcache) -> None:
        if not 0 <= gpu_homes <= size:
            raise ValueError(f"{gpu_homes} GPU homes for {size} logical slots")
        self.gpu_homes = gpu_homes
        super().__init__(size, dtype, device, kvcache, need_sort=True)

    def merge_and_sort_free(self) -> None:
        if len(self.release_pages):
            self.free_pages = merge_sorted(self.free_pages, self.release_pages)
            self.release_pages = self.release_pages[:0]

    def alloc(self, need_size: int) -> torch.Tensor | None:
        self.merge_and_sort_free()  # freed GPU homes go before every free host row
        if need_size > len(self.free_pages):
            return None
        select, self.free_pages = self.free_pages[:need_size], self.free_pages[need_size:]
        return select

    def gpu_free(self) -> torch.Tensor:
        """Free GPU homes, a 0-d device tensor (no host synchronisation: for the metrics' snapshot)."""
        homes = self.gpu_homes
        return (self.free_pages <= homes).sum() + (self.release_pages <= homes).sum()

    def tier_available(self) -> tuple[int, int]:
        """Free (GPU homes, host rows). Synchronises with the device: for reports, not steps."""
        self.merge_and_sort_free()
        bound = torch.tensor([self.gpu_homes], dtype=self.free_pages.dtype, device=self.free_pages.device)
        gpu = int(torch.searchsorted(self.free_pages, bound, right=True).item())
        return gpu, len(self.free_pages) - gpu
