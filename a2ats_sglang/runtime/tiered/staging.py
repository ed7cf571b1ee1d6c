"""Offload mode's prefill staging: GPU slots for K/V that must be on the GPU whole.

Dense prefill attends to a request's whole prompt, so while a prompt is being prefilled (over
several chunks) its tokens' K/V live in staging slots of the GPU KV tensor as well as in the
host pool. SGLang hands out logical slots; :class:`Staging` gives each new logical slot of a
prefilling request a GPU slot, keeps the logical→GPU map that K/V writes are translated with and
a ``req_to_token``-shaped table of GPU slots (by request row and position) that the prefill's
attention indices are built from, and takes a request's slots back when its prefill is over.

Requests are tracked by SGLang's request id: a chunked prompt keeps its id over its chunks,
while a pool row may pass to a new request between two steps. The free list is on the host
(extend metadata runs outside CUDA graphs); the map, the table and the logical slots of each
request stay on the GPU, so placing and releasing never wait for the device.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch


class StagingFull(RuntimeError):
    """More prompt tokens in flight than the staging area holds."""


@dataclass
class StagedPrefix:
    """A cached prefix brought back from the host pool, staged once for all its users."""

    slots: torch.Tensor  # GPU slots, host copy (the free list's)
    slots_dev: torch.Tensor  # the same, on the device (int32, for the tables)
    users: set[str] = field(default_factory=set)  # request ids


class Staging:
    def __init__(self, logical_slots: int, base_slot: int, size: int, max_reqs: int, context_len: int,
                 device: torch.device | str, homes: int = 0) -> None:
        """``homes``: logical slots up to it are GPU rows already (GPU homes): their prefill reads
        and writes them in place, and the staging slot each still reserves stays unused."""
        self.base_slot, self.size, self.device, self.homes = base_slot, size, torch.device(device), homes
        self.map = torch.full((logical_slots,), -1, dtype=torch.int32, device=device)  # logical → GPU slot
        self.table = torch.zeros(max_reqs, context_len, dtype=torch.int32, device=device)  # [row, position]
        self._free = torch.arange(base_slot, base_slot + size, dtype=torch.int64)  # host free list
        self._held: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # rid → [(logical, GPU) slots]
        # cached prefixes (radix-cache hits) staged once for all the requests sharing them
        self._prefix: dict[Hashable, StagedPrefix] = {}
        self._prefix_of: dict[str, Hashable] = {}  # rid → its prefix's key
        # the scheduler's word on which requests share a prefix (patches/staging_admission.py):
        # rid → key, for the next extend
        self.prefix_keys: dict[str, Hashable] = {}

    def available(self) -> int:
        return self._free.numel()

    def in_use(self) -> int:
        return self.size - self._free.numel()

    def held(self) -> list[str]:
        """Requests holding staging slots (release those whose prefill is over)."""
        return list(self._held.keys() | self._prefix_of.keys())

    def is_staged(self, key: Hashable) -> bool:
        return key in self._prefix

    def share_prefix(self, rid: str, row: torch.Tensor, key: Hashable, length: int) -> torch.Tensor | None:
        """Positions ``[0, length)`` of pool row ``row`` (a one-element device tensor) take the
        GPU slots of cached prefix ``key``, staged once for every request that shares it.
        → the GPU slots if they are new (the caller fills them from the host pool), else None"""
        entry = self._prefix.get(key)
        fresh = entry is None
        if fresh:
            if length > self._free.numel():
                raise StagingFull(f"prefill staging has {self._free.numel()} free slots; a {length}-token prefix needs more")
            gpu, self._free = self._free[:length], self._free[length:]
            entry = self._prefix[key] = StagedPrefix(gpu, gpu.to(device=self.device, dtype=torch.int32, non_blocking=True))
        entry.users.add(rid)
        self._prefix_of[rid] = key
        positions = torch.arange(length, device=self.device)
        self.table[row.long().expand(length), positions] = entry.slots_dev
        return entry.slots_dev if fresh else None

    def held_tokens(self, rid: str) -> int:
        """Staging slots request ``rid`` holds (a chunked prompt's earlier chunks)."""
        return sum(p[1].numel() for p in self._held.get(rid, ()))

    def place(self, rids: Sequence[str], rows: torch.Tensor, starts: Sequence[int], lengths: Sequence[int],
              logical: torch.Tensor) -> torch.Tensor:
        """GPU slots for an extend's new tokens: request ``i`` (pool row ``rows[i]``, a device
        tensor) adds ``lengths[i]`` tokens at positions ``starts[i], …`` whose logical slots are
        the next ``lengths[i]`` of ``logical`` (SGLang's ``out_cache_loc``). → the GPU rows the
        prefill reads them at ``[n]``: staging slots, or a GPU home's own row"""
        n = sum(lengths)
        if n > self._free.numel():
            raise StagingFull(
                f"prefill staging holds {self.size} tokens and {self.in_use()} are in use; {n} more do not fit"
            )
        if n == 0:
            return torch.empty(0, dtype=torch.int32, device=self.device)
        gpu, self._free = self._free[:n], self._free[n:]
        gpu_dev = gpu.to(device=self.device, dtype=torch.int32, non_blocking=True)
        logical = logical[:n].to(torch.int64, copy=True)  # held past this batch's own tensors
        self.map[logical] = gpu_dev
        target = self.translate(logical)  # a GPU home is its own row
        counts = torch.tensor(lengths, dtype=torch.int64)
        first = torch.repeat_interleave(torch.tensor(starts, dtype=torch.int64) - torch.cumsum(counts, 0) + counts,
                                        counts)
        positions = (first + torch.arange(n)).to(self.device, non_blocking=True)
        counts_dev = counts.to(self.device, non_blocking=True)
        token_rows = torch.repeat_interleave(rows.to(torch.int64), counts_dev, output_size=n)
        self.table[token_rows, positions] = target
        offset = 0
        for rid, length in zip(rids, lengths):
            if length:
                piece = (logical[offset : offset + length], gpu[offset : offset + length])
                self._held.setdefault(rid, []).append(piece)
            offset += length
        return target

    def release(self, rids: Iterable[str]) -> int:
        """These requests' prefills are over (or they were aborted): their staging slots are
        free again, their logical slots no longer mapped; a shared prefix's slots once its last
        user is done. Unknown ids are ignored. → slots freed"""
        rids = list(rids)
        pieces = [p for rid in rids for p in self._held.pop(rid, ())]
        freed = []
        if pieces:
            # only entries still naming these slots: with the radix cache, SGLang frees a chunk's
            # logical slots that duplicate cached ones while the chunk stays staged here, and may
            # hand them to another prefilling request, whose entries this must leave alone
            logical = torch.cat([p[0] for p in pieces])
            gpu = torch.cat([p[1] for p in pieces])
            ours = gpu.to(self.map.device, non_blocking=True)
            self.map[logical] = torch.where(self.map[logical] == ours, -1, self.map[logical])
            freed.append(gpu)
        for rid in rids:
            key = self._prefix_of.pop(rid, None)
            if key is not None:
                entry = self._prefix[key]
                entry.users.discard(rid)
                if not entry.users:
                    freed.append(self._prefix.pop(key).slots)
        if not freed:
            return 0
        gpu = torch.cat(freed)
        self._free = torch.cat([self._free, gpu])
        return gpu.numel()

    def translate(self, logical: torch.Tensor) -> torch.Tensor:
        """GPU slots of staged logical slots (−1 for any not staged), a GPU home's its own.
        Device op, no sync."""
        logical = logical.long()
        if self.homes:
            return torch.where(logical <= self.homes, logical, self.map[logical].long()).to(torch.int32)
        return self.map[logical]
