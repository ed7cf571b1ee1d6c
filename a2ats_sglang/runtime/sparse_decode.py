"""Per-step state of the sparse decode: budgets, index and score buffers, FlashInfer wrappers.

Different kv heads attend to different tokens, so the KV pool ``[slots, Hkv, d]`` is viewed as
``[slots·Hkv, 1, 1, d]`` (pages of one token, one kv head) and one FlashInfer paged decode runs
over ``bs·Hkv`` rows with ``num_kv_heads = 1`` and the GQA group as query heads. A row's length
is its budget, known on the host from ``seq_lens_cpu`` before the step, so the FlashInfer plan
happens outside the CUDA graph and only the indices (rewritten per layer) change inside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import torch
from flashinfer import BatchDecodeWithPagedKVCacheWrapper
from flashinfer.decode import fast_decode_plan

from a2ats_sglang.kernels.encode import (
    SPLIT_CODES,
    encode_keys,
    encode_projection,
    encode_workspace,
    split_key_limit,
)
from a2ats_sglang.kernels.lut import folded_lookup_table
from a2ats_sglang.kernels.score import score_tokens
from a2ats_sglang.kernels.select import select_and_write, topk_rows, topk_workspace, topk_workspace_numel
from a2ats_sglang.method.codebook import Codebook
from a2ats_sglang.method.rope import RopeSpec
from a2ats_sglang.method.selection import budget_tokens
from a2ats_sglang.method.wrope import DistanceBuckets
from a2ats_sglang.runtime.rotary import DeviceRotary, Tables

if TYPE_CHECKING:
    from a2ats_sglang.runtime.kv_store import KVStore


class PoolKeys(NamedTuple):
    """Keys already in the KV pool that are due for encoding."""

    slots: torch.Tensor  # [n] int64, −1 where there is nothing to encode
    tables: Tables  # un-rotation by each key's own position


class StepTables(NamedTuple):
    due: PoolKeys  # keys whose encoding group the step completes
    queries: Tables  # WRoPE queries, one rotation per distance bucket


def encode_group(window: int) -> int:
    """Decode steps encode keys in aligned groups of this many positions (a power of two ≤ 16
    and ≤ the window): a key waits at most ``group − 1`` steps for its code, all of them inside
    the window, where scoring never reads it. At batch 1 the codebook is then read once per 16
    steps instead of every step."""
    group = 1
    while group * 2 <= min(16, window):
        group *= 2
    return group


@dataclass(frozen=True)
class Budget:
    """Tokens kept per (request, kv head): sinks + window + clamp(⌈ratio·len⌉, min, max), ≤ len."""

    sinks: int
    window: int
    ratio: float
    minimum: int
    maximum: int | None

    def counts(self, seq_lens: torch.Tensor) -> torch.Tensor:
        """Same arithmetic on host and device (float64 ceil), so plan and kernels agree. # int32"""
        k = budget_tokens(seq_lens, self.ratio, self.minimum, self.maximum)
        return torch.minimum(seq_lens.to(torch.int64), k + self.sinks + self.window).to(torch.int32)

    def width(self, context_len: int) -> int:
        """The most tokens any row can keep: the static top-K width of the decode graph."""
        k = max(self.minimum, math.ceil(context_len * self.ratio))
        if self.maximum is not None:
            k = min(k, self.maximum)
        return min(context_len, k + self.sinks + self.window)


ENCODE_KEYS_PER_REQUEST = 16  # the largest encode_group


def _split_keys(max_bs: int, cols: int) -> int:
    """Keys the encode workspace holds: a step's due keys, as many as the kernel would split."""
    return min(max_bs * ENCODE_KEYS_PER_REQUEST, split_key_limit(cols))


class SparseDecodeBuffers:
    """Every tensor the decode graph reads or writes, sized once for ``max_bs`` requests."""

    def __init__(
        self, max_bs: int, num_kv_heads: int, context_len: int, width: int, codebook_size: int, buckets: int,
        device: torch.device | str, fetch: bool = False, layers: int = 1,
    ) -> None:
        self.max_bs, self.num_kv_heads, self.width = max_bs, num_kv_heads, width
        rows = max_bs * num_kv_heads
        self.rows_cap = rows
        # each layer's group-reduced lookup table, rewritten by the next  # [max_bs·nb, Hkv, C]
        self.lut = torch.empty(max_bs * buckets, num_kv_heads, codebook_size, dtype=torch.float32, device=device)
        self.scores = torch.empty(rows, context_len, dtype=torch.float32, device=device)  # [rows, L]
        self.picks = torch.zeros(rows, width, dtype=torch.int32, device=device)  # [rows, width]
        self.counts = torch.zeros(rows, dtype=torch.int32, device=device)  # [rows]
        self.indptr = torch.zeros(rows + 1, dtype=torch.int32, device=device)  # [rows + 1]
        self.indices = torch.zeros(rows * width, dtype=torch.int32, device=device)  # [rows·width]
        self.last_page_len = torch.ones(rows, dtype=torch.int32, device=device)
        # kernel scratch: the codebook split over programs for a step's few new keys; top-K splits
        # (``layers``: the step's due keys of every layer encoded in one launch)
        self.encode_ws = encode_workspace(_split_keys(max_bs, layers * num_kv_heads), layers * num_kv_heads,
                                          codebook_size, device)
        self.topk_ws = topk_workspace(rows, device)
        # a store that resolves picks after the top-K (KVStore.fetches, offload mode): victim
        # slots, then (GPU slot, logical slot) of each miss; (hits, misses)
        self.victims = torch.zeros(rows, 2 * width, dtype=torch.int32, device=device) if fetch else None
        self.stats = torch.zeros(rows, 2, dtype=torch.int32, device=device) if fetch else None

    @staticmethod
    def nbytes(max_bs: int, num_kv_heads: int, context_len: int, width: int, codebook_size: int, buckets: int,
               fetch: bool = False, layers: int = 1) -> int:
        rows = max_bs * num_kv_heads
        lut = 4 * max_bs * buckets * num_kv_heads * codebook_size
        cols = layers * num_kv_heads
        encode_ws = 8 * -(-codebook_size // SPLIT_CODES) * _split_keys(max_bs, cols) * cols
        topk_ws = 4 * topk_workspace_numel(rows)
        fetch_scratch = 4 * rows * (2 * width + 2) if fetch else 0
        return 4 * (rows * context_len + 2 * rows * width + 3 * rows + 1) + lut + encode_ws + topk_ws + fetch_scratch

    def set_counts(self, seq_lens: torch.Tensor, budget: Budget) -> None:
        """Per-row budgets and their prefix sums from device ``seq_lens`` (graph-recordable)."""
        bs = seq_lens.shape[0]
        rows = bs * self.num_kv_heads
        per_req = budget.counts(seq_lens)  # [bs]
        self.counts[:rows].copy_(per_req[:, None].expand(bs, self.num_kv_heads).reshape(-1))
        torch.cumsum(self.counts[:rows], 0, dtype=torch.int32, out=self.indptr[1 : rows + 1])


def host_indptr(seq_lens_cpu: torch.Tensor, budget: Budget, num_kv_heads: int) -> torch.Tensor:
    """The row offsets FlashInfer plans with. # [bs·Hkv + 1] int32, CPU"""
    per_row = budget.counts(seq_lens_cpu).repeat_interleave(num_kv_heads)
    out = torch.zeros(per_row.numel() + 1, dtype=torch.int32)
    torch.cumsum(per_row, 0, dtype=torch.int32, out=out[1:])
    return out


class SparseDecoder:
    """The A²ATS math of one decode step, on the GPU, free of SGLang types.

    Owns the codebook tensors and the code pool; the attention backend feeds it SGLang's
    tensors. Kept separate so the GPU tests can drive it against the method references.
    """

    def __init__(
        self, book: Codebook, slots: int, context_len: int, budget: Budget, buckets: DistanceBuckets,
        reduce: str, device: torch.device | str, batch_invariant: bool = False,
    ) -> None:
        model = book.meta.model
        # the encode kernel sizes its key tile by the number of keys; a key's code must not
        # depend on how many were encoded with it (a prefix hit's continuation, a decode batch)
        self.encode_tiling = {"block_n": 64, "block_c": 64, "num_warps": 4, "num_stages": 2} if batch_invariant else {}
        self.num_kv_heads, self.head_dim = model.num_kv_heads, model.head_dim
        self.group = model.group_size
        self.codebook_size = book.meta.codebook_size
        self.context_len, self.budget, self.reduce = context_len, budget, reduce
        self.width = budget.width(context_len)
        self.encode_group = encode_group(budget.window)
        self.buckets = buckets
        self.edges = torch.tensor(buckets.edges, dtype=torch.int32, device=device)  # [nb]
        self.reps = torch.tensor(buckets.representatives, dtype=torch.int64, device=device)  # [nb]
        self.rotary = DeviceRotary(RopeSpec.from_dict(model.rope), device)
        pairs = [encode_projection(book.chol[i].to(device), book.centroids_z[i].to(device))
                 for i in range(model.num_layers)]
        self.proj = torch.stack([p for p, _ in pairs])  # [layers, Hkv, d, C] float32
        self.half_norm = torch.stack([h for _, h in pairs])  # [layers, Hkv, C] float32
        # codewords in key space for the lookup-table GEMM  # [layers, Hkv, C, d] bf16
        self.decoded = book.decoded.to(device=device, dtype=torch.bfloat16).contiguous()
        # [layers, slots, Hkv] viewed over [layers, Hkv, slots] memory: a kv head's codes are
        # contiguous, so the score kernel's loads (one head a program) use every byte they fetch
        # (score-probe-h200.json: −19% at batch 32, −10% at batch 8, contiguous slots)
        self.codes = torch.zeros(model.num_layers, self.num_kv_heads, slots, dtype=torch.int16,
                                 device=device).transpose(1, 2)

    def encode(
        self, layer: int, k_post: torch.Tensor, loc: torch.Tensor, tables: Tables,
        workspace: torch.Tensor | None = None,
    ) -> None:
        """Codes of keys just written to slots ``loc``: post-RoPE in, un-rotated inside the
        encode kernel with ``tables`` from :meth:`DeviceRotary.key_tables`."""
        k = k_post.reshape(-1, self.num_kv_heads, self.head_dim)
        encode_keys(k, self.proj[layer], self.half_norm[layer], loc, self.codes[layer], workspace,
                    unrotate=self.rotary.unrotate(tables), **self.encode_tiling)

    def encode_pool_layers(self, key_pointers: torch.Tensor, k_pool: torch.Tensor, keys: PoolKeys,
                           workspace: torch.Tensor | None = None, homes: int = 0,
                           host_pointers: torch.Tensor | None = None) -> None:
        """:meth:`encode_pool` for every layer in one launch: ``key_pointers`` int64 ``[layers]``
        holds each layer's key-pool address, ``k_pool`` is one of them (shape, strides, dtype);
        ``host_pointers`` the same for the host rows of slots above ``homes``."""
        encode_keys(k_pool, self.proj, self.half_norm, keys.slots, self.codes, workspace,
                    unrotate=self.rotary.unrotate(keys.tables), gather=True, layer_pointers=key_pointers,
                    homes=homes, host_keys=host_pointers, **self.encode_tiling)

    def encode_pool(self, layer: int, k_pool: torch.Tensor, keys: PoolKeys, workspace: torch.Tensor | None = None,
                    homes: int = 0, host_keys: torch.Tensor | None = None) -> None:
        """Codes of keys already stored in ``k_pool`` ``[slots, Hkv, d]`` (post-RoPE); with
        ``homes``, slots above it in ``host_keys`` at row slot − homes."""
        encode_keys(k_pool, self.proj[layer], self.half_norm[layer], keys.slots, self.codes[layer], workspace,
                    unrotate=self.rotary.unrotate(keys.tables), gather=True, homes=homes, host_keys=host_keys,
                    **self.encode_tiling)

    def _pool_keys(self, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, t: torch.Tensor,
                   want: torch.Tensor) -> PoolKeys:
        """Slots and un-rotations of positions ``t`` ``[bs, n]`` of each request where ``want``."""
        t = t.clamp(0, req_to_token.shape[1] - 1)  # unwanted positions may fall outside the table
        slots = req_to_token[req_pool_indices.long()[:, None], t].long()
        return PoolKeys(torch.where(want, slots, -1).flatten(), self.rotary.key_tables(t.flatten()))

    def due_keys(self, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, positions: torch.Tensor) -> PoolKeys:
        """The keys a decode step at ``positions`` encodes: for each request whose new token
        completes an aligned group of :func:`encode_group` positions, that whole group. # [bs·group]"""
        e = self.encode_group
        positions = positions.long()
        t = positions[:, None] - torch.arange(e - 1, -1, -1, device=positions.device)
        return self._pool_keys(req_to_token, req_pool_indices, t, ((positions + 1) % e == 0)[:, None] & (t >= 0))

    def prefix_tails(self, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                     prefix_lens: torch.Tensor) -> PoolKeys | None:
        """Keys of a reused prefix (the radix cache) that may lack codes: an earlier request's
        last, unfinished decode group. An extend encodes them with its own keys. # [bs·group]"""
        e = self.encode_group
        if e == 1:
            return None
        prefix_lens = prefix_lens.long()
        t = (prefix_lens - prefix_lens % e)[:, None] + torch.arange(e, device=prefix_lens.device)
        return self._pool_keys(req_to_token, req_pool_indices, t, t < prefix_lens[:, None])

    def step_tables(self, positions: torch.Tensor, req_to_token: torch.Tensor,
                    req_pool_indices: torch.Tensor) -> StepTables:
        """What every layer of a decode step shares: the keys due for encoding and the WRoPE
        query rotations at ``positions``."""
        return StepTables(self.due_keys(req_to_token, req_pool_indices, positions),
                          self.rotary.query_tables(positions, self.reps))

    @property
    def num_layers(self) -> int:
        return self.codes.shape[0]

    @property
    def num_buckets(self) -> int:
        return len(self.buckets.edges)

    def lookup_table(self, layer: int, q: torch.Tensor, tables: Tables, out: torch.Tensor | None = None) -> torch.Tensor:
        """Each kv head's WRoPE logit for every codeword, per bucket, reduced (``max`` or
        ``mean``) over its query heads. # [bs, nb, Hkv, C] f32

        ``q`` ``[bs, Hq, d]`` post-RoPE, rotated per bucket by ``tables``
        (:meth:`DeviceRotary.query_tables`) inside the kernel; written into ``out`` (``SparseDecodeBuffers.lut``) when
        given. One fixed-tiling kernel whatever the mode: its entries do not depend on the batch
        (``--enable-deterministic-inference``), and the table it writes is ``G`` times smaller
        than the per-query-head one.
        """
        bs, nb = q.shape[0], self.num_buckets
        if out is not None:
            out = out[: bs * nb]
        lut = folded_lookup_table(self.decoded[layer], q, tables.cos, tables.sin, self.group, self.rotary.spec.neox,
                                  self.rotary.factor, self.reduce, out)  # [bs·nb, Hkv, C]
        return lut.view(bs, nb, self.num_kv_heads, self.codebook_size)

    def select(
        self, layer: int, q: torch.Tensor, tables: Tables, req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, buffers: SparseDecodeBuffers,
        store: KVStore | None = None,
    ) -> None:
        """Write this layer's picks as the KV rows attention reads into ``buffers.indices``.
        Columns past a request's length are neither scored nor read by the top-K. The top-K
        writes the picks' pool rows itself, unless ``store`` resolves them (its ``fetches``: K/V
        in host memory, fetched into GPU slots)."""
        lut = self.lookup_table(layer, q, tables, buffers.lut)
        fetches = store is not None and store.fetches
        self.pick(layer, lut, req_to_token, req_pool_indices, seq_lens, buffers, write=not fetches)
        if fetches:
            store.resolve(layer, buffers, req_to_token, req_pool_indices, seq_lens)

    def pick(self, layer: int, lut: torch.Tensor, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
             seq_lens: torch.Tensor, buffers: SparseDecodeBuffers, write: bool = True) -> None:
        """Score every token from ``lut`` and pick each row's top-K into ``buffers.picks`` (and,
        with ``write``, their KV-pool indices into ``buffers.indices``): the split radix select,
        whose first pass the score kernel counts."""
        rows = req_pool_indices.shape[0] * self.num_kv_heads
        score_tokens(
            lut, self.codes[layer], req_to_token, req_pool_indices, seq_lens, self.edges, self.budget.sinks,
            self.budget.window, buffers.scores, pad=False,
            topk_workspace=buffers.topk_ws,  # the score kernel counts the top-K's first radix pass
        )
        if write:
            select_and_write(
                buffers.scores, buffers.counts, buffers.indptr, req_to_token, req_pool_indices,
                self.num_kv_heads, rows, buffers.picks, buffers.indices, buffers.topk_ws, seq_lens=seq_lens,
                first_pass_done=True,
            )
        else:
            topk_rows(buffers.scores, buffers.counts, rows, buffers.picks, buffers.topk_ws, seq_lens=seq_lens,
                      num_kv_heads=self.num_kv_heads, first_pass_done=True)

    def new_wrapper(self, workspace: torch.Tensor, buffers: SparseDecodeBuffers | None = None,
                    bs: int = 0) -> BatchDecodeWithPagedKVCacheWrapper:
        """A FlashInfer decode wrapper over the per-kv-head view; CUDA-graph bound if ``buffers``."""
        if buffers is None:
            return BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
        rows = bs * self.num_kv_heads
        return BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_tensor_cores=True, use_cuda_graph=True,
            paged_kv_indptr_buffer=buffers.indptr[: rows + 1], paged_kv_indices_buffer=buffers.indices,
            paged_kv_last_page_len_buffer=buffers.last_page_len[:rows],
        )

    def plan(self, wrapper: BatchDecodeWithPagedKVCacheWrapper, buffers: SparseDecodeBuffers,
             seq_lens_cpu: torch.Tensor, kv_dtype: torch.dtype, q_dtype: torch.dtype,
             fixed_split_size: int | None = None, disable_split_kv: bool = False) -> None:
        """FlashInfer plan for this step's row lengths, from the host ``seq_lens_cpu``.

        A wrapper's first plan is FlashInfer's own (it builds the kernel module and reads the
        device ``indptr``, filled here from the host once); later plans are ``fast_decode_plan``
        with the host offsets: no device→host copy. The device offsets of every step come from
        :meth:`SparseDecodeBuffers.set_counts` inside the step. The split settings are SGLang's
        (``--enable-deterministic-inference`` fixes the split size).
        """
        rows = seq_lens_cpu.shape[0] * self.num_kv_heads
        indptr = host_indptr(seq_lens_cpu, self.budget, self.num_kv_heads)
        args = (buffers.indptr[: rows + 1], buffers.indices, buffers.last_page_len[:rows],
                self.group, 1, self.head_dim, 1)
        kwargs = {"data_type": kv_dtype, "q_data_type": q_dtype, "non_blocking": True,
                  "fixed_split_size": fixed_split_size, "disable_split_kv": disable_split_kv}
        if not isinstance(wrapper.begin_forward, partial):
            buffers.indptr[: rows + 1].copy_(indptr)
            wrapper.begin_forward(*args, **kwargs)
            wrapper.begin_forward = partial(fast_decode_plan, wrapper)
        else:
            wrapper.begin_forward(*args, **kwargs, global_override_indptr_cpu=indptr)

    def attend(self, wrapper: BatchDecodeWithPagedKVCacheWrapper, q: torch.Tensor, k_pool: torch.Tensor,
               v_pool: torch.Tensor, sm_scale: float, **kwargs) -> torch.Tensor:
        """Decode attention over the picked tokens. ``q`` ``[bs, Hq, d]`` → ``[bs, Hq, d]``."""
        bs, heads, dim = q.shape
        out = wrapper.forward(
            q.reshape(bs * self.num_kv_heads, self.group, dim),
            (k_pool.view(-1, 1, 1, dim), v_pool.view(-1, 1, 1, dim)), sm_scale=sm_scale, **kwargs,
        )
        return out.view(bs, heads, dim)
