"""The ``a2ats`` attention backend: FlashInfer prefill, A²ATS sparse decode.

Prefill/extend is FlashInfer's, unchanged (exact; with ``--enable-deterministic-inference``
SGLang's unified Triton extend kernel, :mod:`~a2ats_sglang.runtime.unified_extend`); afterwards
the new keys are encoded into the code pool. A decode step, per layer: store K/V, encode the keys whose group of
:func:`~a2ats_sglang.runtime.sparse_decode.encode_group` positions the step completes (read back
from the pool; a newer key sits in the local window, which is never scored), then
:class:`~a2ats_sglang.runtime.sparse_decode.SparseDecoder` scores every token from its code,
keeps sinks + window + top-K per (request, kv head), and FlashInfer decodes over exactly those.
Everything in :meth:`forward_decode` is static-shape GPU work, so SGLang's decode CUDA graphs
capture it; the only host work (the FlashInfer plan) runs in ``init_forward_metadata_out_graph``.
Where the K/V live is one seam, a :class:`~a2ats_sglang.runtime.kv_store.KVStore` (SGLang's GPU
pool, or with ``--a2ats-offload`` the tiered store: host pool, prefill staging, the fetch of
the picks): every hook below calls it, none asks which one runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from sglang.srt.layers.attention.flashinfer_backend import FlashInferAttnBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc

from a2ats_sglang.method.codebook import Codebook, CodebookError
from a2ats_sglang.runtime.config import A2ATSConfig, current_config
from a2ats_sglang.runtime.kv_store import open_store
from a2ats_sglang.runtime.memory import distance_buckets, resolve_budget
from a2ats_sglang.runtime.sparse_decode import (
    PoolKeys,
    SparseDecodeBuffers,
    SparseDecoder,
    StepTables,
)
from a2ats_sglang.runtime.unified_extend import UnifiedExtend

if TYPE_CHECKING:
    from flashinfer import BatchDecodeWithPagedKVCacheWrapper
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)


def build_decoder(cfg: A2ATSConfig, book: Codebook, slots: int, context_len: int, device,
                  batch_invariant: bool = False) -> SparseDecoder:
    """Flags override the codebook's calibration values (window, sinks, b)."""
    meta = book.meta
    budget = resolve_budget(cfg, meta.window, meta.sinks)
    b = cfg.b if cfg.b is not None else meta.b
    buckets = distance_buckets(cfg, budget.window, b, context_len)
    return SparseDecoder(book, slots, context_len, budget, buckets, cfg.selector, device, batch_invariant)


class A2ATSAttnBackend(FlashInferAttnBackend):
    def __init__(self, model_runner: ModelRunner, config: A2ATSConfig | None = None) -> None:
        super().__init__(model_runner)
        cfg = config or current_config()
        if model_runner.server_args.speculative_algorithm is not None:
            raise ValueError("the a2ats backend does not support speculative decoding yet")
        if self.num_wrappers != 1:
            raise ValueError("the a2ats backend does not support sliding-window or cross attention")
        if model_runner.server_args.tp_size != 1:
            raise ValueError("the a2ats backend runs with --tp-size 1 only for now")
        if cfg.codebook is None:
            raise CodebookError(
                "no A²ATS codebook configured: start the server with python -m "
                "a2ats_sglang.launch_server (it calibrates or finds one) or pass --a2ats-codebook"
            )
        mc = model_runner.model_config
        book = Codebook.load(cfg.codebook, model_config=mc.hf_config)
        pool = self.token_to_kv_pool
        if pool.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(
                f"the a2ats backend encodes keys read back from the KV cache and needs it in 16 bits, "
                f"not {pool.dtype}: use --kv-cache-dtype auto"
            )
        self.device = model_runner.device
        self.codebook_path = str(cfg.codebook)
        # --enable-deterministic-inference promises batch-invariant results: fixed tilings in the
        # decoder's kernels, extends through SGLang's unified Triton kernel (unified_extend.py)
        self.deterministic = model_runner.server_args.enable_deterministic_inference
        self.store, self.decoder = open_store(
            pool, lambda slots: build_decoder(cfg, book, slots, mc.context_len, self.device,
                                              batch_invariant=self.deterministic),
            self.device, model_runner.token_to_kv_pool_allocator, prometheus=model_runner.server_args.enable_metrics,
        )
        # the slots the extend's paged attention reads (staging's GPU slots in offload mode)
        updater = self.indices_updater_prefill
        updater.req_to_token = self.store.prefill_table(updater.req_to_token)
        # each layer's keys by logical slot: one launch encodes a decode step's due keys in every layer
        # (with GPU homes, the host rows' keys of the slots above them too)
        layers = range(self.decoder.num_layers)
        self.key_pointers = self._pointers([self.store.keys(i) for i in layers])
        self.host_key_pointers = self._pointers([self.store.host_keys(i) for i in layers]) if self.store.homes else None
        self.graph_buffers: SparseDecodeBuffers | None = None
        self.graph_wrappers: dict[int, BatchDecodeWithPagedKVCacheWrapper] = {}
        self.eager_buffers: SparseDecodeBuffers | None = None
        self.eager_wrapper = self.decoder.new_wrapper(self.workspace_buffer)
        self.step: tuple[SparseDecodeBuffers, BatchDecodeWithPagedKVCacheWrapper] | None = None
        self.tables: StepTables | None = None  # this decode step's rotations, shared by all layers
        self.extend_tails: PoolKeys | None = None  # reused-prefix keys this extend encodes
        self.unified: UnifiedExtend | None = None  # this extend's index lists, in deterministic mode
        d = self.decoder
        logger.info(
            "A²ATS decode: codebook %s (%s, %d codewords), sinks %d, window %d, K = %.3g·len in "
            "[%s, %s], wrope %s (%d buckets), static width %d; codes %.1f MiB, codebook %.1f MiB",
            cfg.codebook, book.meta.kind, book.meta.codebook_size, d.budget.sinks, d.budget.window,
            cfg.budget_ratio, cfg.budget_min, cfg.budget_max, cfg.wrope, len(d.buckets.edges), d.width,
            d.codes.numel() * 2 / 2**20,
            (d.proj.numel() * 4 + d.half_norm.numel() * 4 + d.decoded.numel() * 2) / 2**20,
        )

    def _pointers(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Each tensor's address, int64 on the GPU (the one-launch encode reads them there)."""
        return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=self.device)

    def a2ats_state(self, free_tokens: int) -> dict:
        """This backend's part of ``/server_info`` (:mod:`~a2ats_sglang.runtime.server_state`)."""
        return self.store.state(self.decoder, self.codebook_path, free_tokens)

    # -- metadata -------------------------------------------------------------------------

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int, kv_indices_buf=None) -> None:
        super().init_cuda_graph_state(max_bs, max_num_tokens, kv_indices_buf)
        self.graph_buffers = self._buffers(max_bs)

    def _buffers(self, bs: int) -> SparseDecodeBuffers:
        d = self.decoder
        return SparseDecodeBuffers(bs, d.num_kv_heads, d.context_len, d.width, d.codebook_size, d.num_buckets,
                                   self.device, fetch=self.store.fetches, layers=d.num_layers)

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        if not forward_batch.forward_mode.is_decode_or_idle():
            prefix_lens = forward_batch.extend_prefix_lens
            fb = forward_batch
            self.store.begin_extend(fb.rids, fb.req_pool_indices, fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu,
                                    fb.out_cache_loc, self.req_to_token_pool.req_to_token)
            self.extend_tails = None if prefix_lens is None else self.decoder.prefix_tails(
                self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices, prefix_lens)
            if not self.deterministic:
                return super().init_forward_metadata(forward_batch)
            # the table the prefill reads: the store's (staging's in offload mode)
            self.unified = UnifiedExtend.plan(
                self.indices_updater_prefill.req_to_token, fb.req_pool_indices, fb.seq_lens, fb.extend_prefix_lens,
                fb.extend_seq_lens, fb.seq_lens_sum, max(fb.extend_seq_lens_cpu))
            return
        self.store.begin_decode(forward_batch.rids)
        bs = forward_batch.batch_size
        if bs == 0:
            self.step = None
            return
        if self.eager_buffers is None or self.eager_buffers.max_bs < bs:
            self.eager_buffers = self._buffers(bs)
        self._prepare(self.eager_wrapper, self.eager_buffers, forward_batch, graph=False)
        self._device_state(forward_batch)

    def init_forward_metadata_out_graph(self, forward_batch: ForwardBatch, in_capture: bool = False) -> None:
        if not forward_batch.forward_mode.is_decode_or_idle():
            return super().init_forward_metadata_out_graph(forward_batch, in_capture)
        self.store.begin_decode(getattr(forward_batch, "rids", None), capture=in_capture)  # a replay's view has no ids
        bs = forward_batch.batch_size
        buffers = self.graph_buffers
        assert buffers is not None, "init_cuda_graph_state was not called"
        if in_capture:
            self.graph_wrappers[bs] = self.decoder.new_wrapper(self.workspace_buffer, buffers, bs)
        self._prepare(self.graph_wrappers[bs], buffers, forward_batch, graph=True)

    def _prepare(self, wrapper, buffers: SparseDecodeBuffers, forward_batch: ForwardBatch, graph: bool) -> None:
        """Host side of a decode step: the FlashInfer plan for this step's row lengths."""
        bs = forward_batch.batch_size
        updater = self.indices_updater_decode
        # split settings as FlashInfer's own decode uses them (deterministic mode fixes them)
        split = {"fixed_split_size": None, "disable_split_kv": self.disable_cuda_graph_kv_split} if graph else {
            "fixed_split_size": self.decode_split_tile_size, "disable_split_kv": False}
        self.decoder.plan(
            wrapper, buffers, forward_batch.seq_lens_cpu[:bs], updater.data_type, updater.q_data_type, **split
        )
        self.step = (buffers, wrapper)

    def init_forward_metadata_in_graph(self, forward_batch: ForwardBatch) -> None:
        if forward_batch.forward_mode.is_decode_or_idle() and self.step is not None:
            self._device_state(forward_batch)
        else:
            super().init_forward_metadata_in_graph(forward_batch)

    def _device_state(self, forward_batch: ForwardBatch) -> None:
        """Device side of a decode step, shared by every layer: row budgets and offsets, the keys
        due for encoding and the rotation tables (recorded into the decode graph)."""
        bs = forward_batch.batch_size
        self.store.begin_step()
        self.step[0].set_counts(forward_batch.seq_lens[:bs], self.decoder.budget)
        self.tables = self.decoder.step_tables(
            forward_batch.positions[:bs], self.req_to_token_pool.req_to_token, forward_batch.req_pool_indices[:bs])

    # -- forward --------------------------------------------------------------------------

    def forward_extend(self, q, k, v, layer: RadixAttention, forward_batch: ForwardBatch, save_kv_cache=True, **kwargs):
        self.store.wait_layer(layer.layer_id)
        out = (super().forward_extend(q, k, v, layer, forward_batch, save_kv_cache) if self.unified is None
               else self._extend_unified(q, k, v, layer, forward_batch, save_kv_cache))
        if k is not None:
            tables = self.decoder.rotary.key_tables(forward_batch.positions)
            self.decoder.encode(layer.layer_id, k, forward_batch.out_cache_loc, tables)
            if self.extend_tails is not None:  # reused-prefix keys, by logical slot
                self.decoder.encode_pool(layer.layer_id, self.store.keys(layer.layer_id), self.extend_tails,
                                         homes=self.store.homes, host_keys=self.store.host_keys(layer.layer_id))
        return out

    def _extend_unified(self, q, k, v, layer: RadixAttention, forward_batch: ForwardBatch, save_kv_cache: bool):
        pool = self.token_to_kv_pool
        if k is not None and save_kv_cache:
            pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, None), k, v, *self._kv_write_scales(layer))
        k_pool, v_pool = pool.get_kv_buffer(layer.layer_id)
        out = self.unified.attend(
            q.contiguous().view(-1, layer.tp_q_head_num, layer.head_dim), k_pool, v_pool, layer.scaling,
            logit_cap=layer.logit_cap, k_scale=layer.k_scale_float, v_scale=layer.v_scale_float,
        )
        return out.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def forward_decode(self, q, k, v, layer: RadixAttention, forward_batch: ForwardBatch, save_kv_cache=True, **kwargs):
        if k is not None and save_kv_cache:
            self.token_to_kv_pool.set_kv_buffer(
                layer, KVWriteLoc(forward_batch.out_cache_loc, None), k, v, *self._kv_write_scales(layer)
            )
        assert self.step is not None, "decode metadata was not initialised"
        buffers, wrapper = self.step
        k_pool, v_pool = self.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        if k is not None and layer.layer_id == self.decoder.num_layers - 1:
            # every layer's K of the step is in the pool now: one launch encodes the due groups of
            # all layers (the new keys wait in the window, which scoring never reads)
            self.decoder.encode_pool_layers(self.key_pointers, self.store.keys(layer.layer_id), self.tables.due,
                                            buffers.encode_ws, self.store.homes, self.host_key_pointers)
        bs = forward_batch.batch_size
        q = q.contiguous().view(bs, layer.tp_q_head_num, layer.head_dim)
        self.decoder.select(
            layer.layer_id, q, self.tables.queries, self.req_to_token_pool.req_to_token,
            forward_batch.req_pool_indices, forward_batch.seq_lens, buffers, self.store,
        )
        out = self.decoder.attend(
            wrapper, q, k_pool, v_pool, layer.scaling, logits_soft_cap=layer.logit_cap,
            k_scale=layer.k_scale_float, v_scale=layer.v_scale_float,
        )
        return out.view(bs, layer.tp_q_head_num * layer.head_dim)
