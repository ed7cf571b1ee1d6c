"""Every SGLang and FlashInfer internal the runtime calls, overrides or reads, with what it was
in SGLang 0.5.17 (and the FlashInfer it pins), checked in a fresh process: an upgrade that
changes one fails here, loudly, instead of inside a server. Hooks into SGLang live in
``patches/`` with their own ``TARGET``/``SIGNATURE`` (``tests/test_patches.py``); this covers the
rest: the backend's base class and the pools it subclasses or reads, the kernels and
registries it calls, and the fields and attributes it reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# dotted target: its signature in 0.5.17 (a Triton kernel's argument names)
SIGNATURES = {
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.__init__':
        "(self, model_runner: 'ModelRunner', skip_prefill: 'bool' = False, kv_indptr_buf: 'Optional[torch.Tensor]' = None, kv_last_page_len_buf: 'Optional[torch.Tensor]' = None, init_new_workspace: 'bool' = False)",
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.init_forward_metadata':
        "(self, forward_batch: 'ForwardBatch')",
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.init_forward_metadata_out_graph':
        "(self, forward_batch: 'ForwardBatch', in_capture: 'bool' = False)",
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.init_forward_metadata_in_graph':
        "(self, forward_batch: 'ForwardBatch')",
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.init_cuda_graph_state':
        "(self, max_bs: 'int', max_num_tokens: 'int', kv_indices_buf: 'Optional[torch.Tensor]' = None)",
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.forward_extend':
        "(self, q: 'torch.Tensor', k: 'torch.Tensor', v: 'torch.Tensor', layer: 'RadixAttention', forward_batch: 'ForwardBatch', save_kv_cache=True)",
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend.forward_decode':
        "(self, q: 'torch.Tensor', k: 'torch.Tensor', v: 'torch.Tensor', layer: 'RadixAttention', forward_batch: 'ForwardBatch', save_kv_cache=True)",
    'sglang.srt.layers.attention.flashinfer_backend.FlashInferAttnBackend._kv_write_scales':
        "(self, layer: 'RadixAttention')",
    'sglang.srt.mem_cache.memory_pool.MHATokenToKVPool.__init__':
        "(self, size: 'int', page_size: 'int', dtype: 'torch.dtype', head_num: 'int', head_dim: 'int', layer_num: 'int', device: 'str', enable_memory_saver: 'bool', v_head_dim: 'Optional[int]' = None, swa_head_num: 'Optional[int]' = None, swa_head_dim: 'Optional[int]' = None, swa_v_head_dim: 'Optional[int]' = None, start_layer: 'Optional[int]' = None, end_layer: 'Optional[int]' = None, enable_alt_stream: 'bool' = True, enable_kv_cache_copy: 'bool' = False, kv_cache_layout: 'Optional[str]' = None, quant_method=None, post_capture_active: 'bool' = False, allocation_label: 'Optional[str]' = None)",
    'sglang.srt.mem_cache.memory_pool.MHATokenToKVPool.set_kv_buffer':
        "(self, layer: 'RadixAttention', loc_info, cache_k: 'torch.Tensor', cache_v: 'torch.Tensor', k_scale: 'Optional[float]' = None, v_scale: 'Optional[float]' = None, layer_id_override: 'Optional[int]' = None, dcp_kv_mask: 'Optional[torch.Tensor]' = None)",
    'sglang.srt.mem_cache.memory_pool.MHATokenToKVPool.get_kv_buffer':
        "(self, layer_id: 'int')",
    'sglang.srt.mem_cache.memory_pool.MHATokenToKVPool.get_key_buffer':
        "(self, layer_id: 'int')",
    'sglang.srt.mem_cache.memory_pool.unwrap_write_loc':
        '(loc_info)',
    'flashinfer.decode.fast_decode_plan':
        "(self, indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, num_qo_heads: int, num_kv_heads: int, head_dim: int, page_size: int, pos_encoding_mode: str = 'NONE', window_left: int = -1, logits_soft_cap: Optional[float] = None, q_data_type: Union[str, torch.dtype, NoneType] = None, kv_data_type: Union[str, torch.dtype, NoneType] = None, data_type: Union[str, torch.dtype, NoneType] = None, sm_scale: Optional[float] = None, rope_scale: Optional[float] = None, rope_theta: Optional[float] = None, non_blocking: bool = True, fixed_split_size: Optional[int] = None, disable_split_kv: bool = False, global_override_indptr_cpu: Optional[torch.Tensor] = None) -> None",
    'flashinfer.BatchDecodeWithPagedKVCacheWrapper.__init__':
        "(self, float_workspace_buffer: torch.Tensor, kv_layout: str = 'NHD', use_cuda_graph: bool = False, use_tensor_cores: bool = False, paged_kv_indptr_buffer: Optional[torch.Tensor] = None, paged_kv_indices_buffer: Optional[torch.Tensor] = None, paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None, backend: str = 'auto', jit_args: Optional[List[Any]] = None) -> None",
    'flashinfer.BatchDecodeWithPagedKVCacheWrapper.forward':
        "(self, q: torch.Tensor, paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]], pos_encoding_mode: str = 'NONE', q_scale: Optional[float] = None, k_scale: Optional[float] = None, v_scale: Optional[float] = None, window_left: int = -1, logits_soft_cap: Optional[float] = None, sm_scale: Optional[float] = None, rope_scale: Optional[float] = None, rope_theta: Optional[float] = None) -> torch.Tensor",
    'sglang.kernels.ops.attention.extend_attention.extend_attention_fwd_unified':
        '(q, o, k_buffer, v_buffer, k_scale, v_scale, qo_indptr, kv_indptr, kv_indices, prefix_lens, max_len_extend, custom_mask=None, mask_indptr=None, sm_scale=None, logit_cap=0.0, is_causal=True, sliding_window_size=-1, sinks=None, window_start_pos=None, xai_temperature_len=-1, page_size: int = 1, score_mod=None, aux_tensors=None)',
    'sglang.kernels.ops.kvcache.kv_indices.create_flashinfer_kv_indices_triton':
        '(req_to_token_ptr, req_pool_indices_ptr, page_kernel_lens_ptr, kv_indptr, kv_start_idx, kv_indices_ptr, req_to_token_ptr_stride)',
    'sglang.srt.mem_cache.radix_cache.RadixCache.__init__':
        "(self, params: 'CacheInitParams')",
    'sglang.srt.mem_cache.registry.register_radix_cache_backend':
        "(name: 'str', factory: 'RadixCacheFactory') -> 'None'",
    'sglang.srt.layers.attention.attention_registry.register_attention_backend':
        '(name)',
    'sglang.srt.managers.scheduler.run_scheduler_process':
        '(server_args: sglang.srt.server_args.ServerArgs, port_args: sglang.srt.server_args.PortArgs, gpu_id: int, tp_rank: int, attn_cp_rank: int, moe_dp_rank: int, moe_ep_rank: int, pp_rank: int, dp_rank: Optional[int], pipe_writer, display_tp_rank: Optional[int] = None, display_dp_rank: Optional[int] = None, display_moe_ep_rank: Optional[int] = None)',
    'sglang.srt.entrypoints.warmup.warmup':
        "(name: 'str')",
    'sglang.srt.mem_cache.allocator.token.TokenToKVPoolAllocator.available_size':
        '(self)',
}
# ForwardBatch fields the backend and the stores read
FORWARD_BATCH_FIELDS = ("forward_mode", "batch_size", "req_pool_indices", "seq_lens", "seq_lens_cpu", "seq_lens_sum",
                        "positions", "out_cache_loc", "extend_prefix_lens", "extend_prefix_lens_cpu",
                        "extend_seq_lens", "extend_seq_lens_cpu", "rids")
# attributes of FlashInfer's backend that ours reads or rebinds, assigned in its module's source
BACKEND_ATTRIBUTES = ("indices_updater_prefill", "indices_updater_decode", "num_wrappers", "workspace_buffer",
                      "decode_split_tile_size", "disable_cuda_graph_kv_split", "token_to_kv_pool", "req_to_token_pool",
                      "req_to_token", "data_type", "q_data_type")

PROBE = """
import dataclasses, inspect, json, sys
from a2ats_sglang.patches import resolve
out = {"signatures": {}}
for target in json.loads(sys.argv[1]):
    try:
        obj = resolve(target)
        out["signatures"][target] = ("(" + ", ".join(obj.arg_names) + ")" if hasattr(obj, "arg_names")
                                     else str(inspect.signature(obj)))
    except Exception as e:
        out["signatures"][target] = f"cannot resolve: {type(e).__name__}: {e}"
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.layers.attention import flashinfer_backend
out["kv_write_loc"] = [f.name for f in dataclasses.fields(KVWriteLoc)]
out["forward_batch"] = [f.name for f in dataclasses.fields(ForwardBatch)]
out["backend_source"] = inspect.getsource(flashinfer_backend)
print("PROBE", json.dumps(out))
"""


@pytest.fixture(scope="module")
def found() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(SIGNATURES))], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("PROBE ", 1)[1])


@pytest.mark.parametrize("target", list(SIGNATURES))
def test_internal_signature_unchanged(target: str, found: dict) -> None:
    assert found["signatures"][target] == SIGNATURES[target], f"SGLang or FlashInfer changed {target}: review its callers"


def test_write_locations_are_built_positionally(found: dict) -> None:
    """The backend builds ``KVWriteLoc(loc, None)``: its first two fields must stay (loc, swa_loc)."""
    assert found["kv_write_loc"][:2] == ["loc", "swa_loc"]


def test_the_forward_batch_fields_read_are_there(found: dict) -> None:
    assert [f for f in FORWARD_BATCH_FIELDS if f not in found["forward_batch"]] == []


def test_flashinfer_backend_attributes_read_are_assigned(found: dict) -> None:
    source = found["backend_source"]
    missing = [a for a in BACKEND_ATTRIBUTES if f"self.{a} =" not in source and f"self.{a}: " not in source]
    assert missing == []
