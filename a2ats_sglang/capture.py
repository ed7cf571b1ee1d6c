"""Capture post-RoPE queries, keys and values of every layer of a Hugging Face model.

We register an attention implementation with transformers' ``AttentionInterface`` that hands
each layer's post-RoPE ``q, k, v`` to a callback and then runs SDPA. Capturing *post*-RoPE
vectors (not projection outputs) is what makes this generic: models with q/k norms (Qwen3) or
biases (Qwen2) are handled by the model itself, and the pre-RoPE key is recovered with
:meth:`RopeSpec.unrotate`, exactly as the serving path does with the KV cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

IMPLEMENTATION = "a2ats_capture"

# callback(layer, q [n, Hq, d], k [n, Hkv, d], v [n, Hkv, dv]) for the tokens of this forward
Sink = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
_SINK: ContextVar[Sink | None] = ContextVar("a2ats_capture_sink", default=None)


def _capture_attention(module, query, key, value, attention_mask, **kwargs):  # noqa: ANN001
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sink = _SINK.get()
    if sink is not None:
        if query.shape[0] != 1:
            raise ValueError("capture runs one sequence at a time (batch size 1)")
        n = query.shape[2]
        # with a KV cache, key/value hold the past too: the new tokens are the last n
        sink(module.layer_idx, query[0].transpose(0, 1), key[0, :, -n:].transpose(0, 1), value[0, :, -n:].transpose(0, 1))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Make ``attn_implementation="a2ats_capture"`` available to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _capture_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def load_model(model_path: str | Path, device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> PreTrainedModel:
    """An HF causal LM whose attention layers can be captured."""
    from transformers import AutoModelForCausalLM

    register()
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path), dtype=dtype, attn_implementation=IMPLEMENTATION
    )
    return model.to(device).eval()


@contextlib.contextmanager
def capturing(sink: Sink) -> Iterator[None]:
    token = _SINK.set(sink)
    try:
        yield
    finally:
        _SINK.reset(token)


@torch.inference_mode()
def run_document(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    sink: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None],
    chunk_tokens: int = 4096,
    start: int = 0,
) -> None:
    """Prefill ``input_ids`` ``[n]`` in chunks, calling ``sink(layer, positions, q, k, v)``.

    The text sits at positions ``start, start + 1, …`` (to test position independence).
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids = input_ids.to(device)[None]
    cache = DynamicCache(config=model.config)
    for first in range(0, ids.shape[1], chunk_tokens):
        chunk = ids[:, first : first + chunk_tokens]
        positions = torch.arange(start + first, start + first + chunk.shape[1], device=device)

        def layer_sink(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
            sink(layer, positions, q, k, v)

        with capturing(layer_sink):
            model(input_ids=chunk, position_ids=positions[None], past_key_values=cache, use_cache=True, logits_to_keep=1)
