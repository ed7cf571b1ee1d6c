"""Where the a2ats backend's K/V live, behind one seam.

The backend and the decoder ask a :class:`KVStore` what a step needs and never branch on which
store runs:

- :class:`ResidentStore`: SGLang's own GPU KV pool. The top-K writes its picks as pool rows.
- :class:`~a2ats_sglang.runtime.tiered.store.TieredStore` (``--a2ats-offload``): every token in the
  pinned host pool, its codes on the GPU; prefills read staging slots, and a decode step's
  picks are resolved to GPU rows afterwards (hot buffers or the shared cache, filled from host
  memory inside the decode graph).

A store prepares an extend and a decode step (host side, outside CUDA graphs, except
:meth:`KVStore.begin_step`), gives a layer's keys by logical slot (what the key encoders read)
and resolves a layer's picks to the rows attention reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from a2ats_sglang.runtime.server_state import describe

if TYPE_CHECKING:
    from a2ats_sglang.runtime.sparse_decode import SparseDecodeBuffers, SparseDecoder


class KVStore:
    """The steps' hooks, each a no-op unless a store needs it."""

    fetches = False  # picks are resolved to rows after the top-K (its scratch: SparseDecodeBuffers(fetch=True))
    homes = 0  # logical slots up to this are read from keys(); above, from host_keys() at row slot − homes

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def prefill_table(self, req_to_token: torch.Tensor) -> torch.Tensor:
        """The ``[rows, context]`` slot table the extend's attention indexes the GPU KV tensor with."""
        return req_to_token

    def keys(self, layer_id: int) -> torch.Tensor:
        """The layer's keys by logical slot ``[slots, Hkv, d]``: what the encoders read (up to
        :attr:`homes` only, when there are homes)."""
        raise NotImplementedError

    def host_keys(self, layer_id: int) -> torch.Tensor | None:
        """With :attr:`homes`, the layer's keys of the slots above them, by host row."""
        return None

    def begin_extend(self, rids: list[str], req_pool_indices: torch.Tensor, prefix_lens: list[int] | None,
                     extend_lens: list[int] | None, out_cache_loc: torch.Tensor, req_to_token: torch.Tensor) -> None:
        """Host side of an extend, before its first layer runs."""

    def wait_layer(self, layer_id: int) -> None:
        """The forward stream waits for whatever this layer's extend attention reads."""

    def begin_decode(self, rids: list[str] | None, capture: bool = False) -> None:
        """Host side of a decode step (``rids`` None on a CUDA-graph replay)."""

    def begin_step(self) -> None:
        """Device side of a decode step, once before its layers (recorded into the graph)."""

    def resolve(self, layer_id: int, buffers: SparseDecodeBuffers, req_to_token: torch.Tensor,
                req_pool_indices: torch.Tensor, seq_lens: torch.Tensor) -> None:
        """With :attr:`fetches`: turn the layer's picks (``buffers.picks``) into the rows of
        ``buffers.indices`` attention reads."""

    def state(self, decoder: SparseDecoder, codebook_path: str, free_tokens: int) -> dict:
        """This store's part of ``/server_info``."""
        raise NotImplementedError


class ResidentStore(KVStore):
    """SGLang's GPU KV pool, read in place: a pick's row is its slot."""

    def keys(self, layer_id: int) -> torch.Tensor:
        return self.pool.get_key_buffer(layer_id)

    def state(self, decoder: SparseDecoder, codebook_path: str, free_tokens: int) -> dict:
        return describe(decoder, codebook_path, self.pool.size, free_tokens)


def open_store(pool: Any, make_decoder: Callable[[int], SparseDecoder], device: torch.device | str,
               allocator: Any, prometheus: bool) -> tuple[KVStore, SparseDecoder]:
    """The store SGLang's KV pool calls for, and the decoder built for its logical slots (the
    one place that tells the modes apart: offload mode's pool is an ``OffloadKVPool``).
    ``allocator``: SGLang's slot allocator (the host slots in use, for the metrics);
    ``prometheus``: export them."""
    from a2ats_sglang.runtime.tiered.store import TieredStore
    from a2ats_sglang.runtime.tiered.pool import OffloadKVPool

    if isinstance(pool, OffloadKVPool):
        decoder = make_decoder(pool.logical_slots)
        def host_used() -> int:
            return pool.plan.logical_slots - allocator.available_size()

        return TieredStore(pool, decoder.num_layers, decoder.width, device, host_used, prometheus,
                           getattr(allocator, "gpu_free", None)), decoder
    return ResidentStore(pool), make_decoder(pool.size + pool.page_size)
