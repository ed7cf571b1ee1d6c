"""Token selection over per-query-head scores, and the reference sparse attention.

Every selector returns a boolean mask ``[B, Hkv, S]``: the tokens kv head ``g`` attends to for
each of ``B`` decode queries. All of them always include the attention sinks (the first
``sinks`` tokens) and the local window (the last ``window`` tokens, the current one included),
and choose ``budget`` more tokens among the rest. ``lengths`` ``[B]`` is each query's
context length (the query sits at position ``length − 1``); ``budget`` is an int or ``[B]``.

- :func:`select_per_kv_head` — a fixed budget per (request, kv head), tokens ranked by a
  reduction over the group's query heads. With ``reduce="max"`` over approximate logits it is
  the serving selector; with ``reduce="mean"`` over exact probabilities it is the oracle
  (it maximises the group's mean attention-mass recall for the budget).
- :func:`select_union` — the paper's per-query-head top-K, unioned over the GQA group (up to
  ``group × budget`` tokens per kv head).
- Quest is :func:`select_per_kv_head` over :func:`~a2ats_sglang.method.scores.quest_page_bounds`
  with ``page_size``, which keeps whole pages.
"""

from __future__ import annotations

from typing import Literal

import torch

from a2ats_sglang.method.scores import causal_mask, exact_logits, group_heads


def budget_tokens(
    lengths: torch.Tensor, ratio: float, minimum: int = 0, maximum: int | None = None
) -> torch.Tensor:
    """Per-request top-K size ``K = clamp(⌈ratio·len⌉, minimum, maximum)``. # [B] int64"""
    k = torch.ceil(lengths.double() * ratio).long().clamp_min(minimum)
    return k if maximum is None else k.clamp_max(maximum)


def protected_mask(lengths: torch.Tensor, seq_len: int, sinks: int, window: int) -> torch.Tensor:
    """Sinks and local window of each query, always attended. # [B, S] bool"""
    pos = torch.arange(seq_len, device=lengths.device)[None, :]
    visible = pos < lengths[:, None]
    return visible & ((pos < sinks) | (pos >= lengths[:, None] - window))


def _candidates(scores: torch.Tensor, lengths: torch.Tensor, sinks: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    seq_len = scores.shape[-1]
    protected = protected_mask(lengths, seq_len, sinks, window)
    candidate = causal_mask(lengths, seq_len) & ~protected  # [B, S]
    return protected, candidate


def _topk_mask(ranked: torch.Tensor, candidate: torch.Tensor, budget: torch.Tensor | int) -> torch.Tensor:
    """Top-``budget`` candidates along the last axis of ``ranked`` ``[B, X, S]``."""
    scores = ranked.masked_fill(~candidate[:, None, :], float("-inf"))
    budget_t = torch.as_tensor(budget, device=scores.device).reshape(-1)
    kmax = int(budget_t.max()) if budget_t.numel() else 0
    kmax = min(kmax, scores.shape[-1])
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if kmax == 0:
        return mask
    _, idx = scores.topk(kmax, dim=-1)
    rank = torch.arange(kmax, device=scores.device)
    keep = rank[None, None, :] < budget_t.view(-1, 1, 1)  # per-request K
    mask.scatter_(-1, idx, keep.expand_as(idx))
    return mask & candidate[:, None, :]  # drop -inf picks when fewer candidates than K


def select_per_kv_head(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    budget: torch.Tensor | int,
    num_kv_heads: int,
    sinks: int,
    window: int,
    reduce: Literal["max", "mean"] = "max",
    page_size: int = 1,
    normalize: bool = False,
) -> torch.Tensor:
    """Fixed budget per kv head; tokens ranked by ``reduce`` of the group's scores.

    ``normalize`` turns each query head's logits into log-probabilities over its visible
    tokens first, so heads with flat and peaked distributions compete on equal terms.
    With ``page_size > 1`` the scores must be constant per page (Quest bounds) and whole
    pages are chosen: ``⌈budget / page_size⌉`` of them.
    """
    batch, q_heads, seq_len = scores.shape
    if normalize:
        visible = causal_mask(lengths, seq_len)[:, None, :]
        scores = scores.masked_fill(~visible, float("-inf")).log_softmax(-1)
    grouped = scores.view(batch, num_kv_heads, q_heads // num_kv_heads, seq_len)
    ranked = grouped.amax(2) if reduce == "max" else grouped.mean(2)  # [B, Hkv, S]
    protected, candidate = _candidates(scores, lengths, sinks, window)
    if page_size == 1:
        chosen = _topk_mask(ranked, candidate, budget)
    else:
        chosen = _select_pages(ranked, candidate, budget, page_size)
    return chosen | protected[:, None, :]


def _select_pages(ranked: torch.Tensor, candidate: torch.Tensor, budget: torch.Tensor | int, page_size: int) -> torch.Tensor:
    batch, heads, seq_len = ranked.shape
    pages = -(-seq_len // page_size)
    pad = pages * page_size - seq_len
    page_score = torch.nn.functional.pad(ranked, (0, pad), value=float("-inf"))[..., ::page_size]
    page_cand = torch.nn.functional.pad(candidate, (0, pad)).view(batch, pages, page_size).any(-1)
    page_budget = -(-torch.as_tensor(budget, device=ranked.device) // page_size)
    page_mask = _topk_mask(page_score, page_cand, page_budget)  # [B, Hkv, P]
    token_mask = page_mask.repeat_interleave(page_size, dim=-1)[..., :seq_len]
    return token_mask & candidate[:, None, :]


def select_union(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    budget: torch.Tensor | int,
    num_kv_heads: int,
    sinks: int,
    window: int,
) -> torch.Tensor:
    """The paper's selector: top-``budget`` per query head, unioned over each GQA group."""
    batch, q_heads, seq_len = scores.shape
    protected, candidate = _candidates(scores, lengths, sinks, window)
    per_head = _topk_mask(scores, candidate, budget)  # [B, Hq, S]
    union = per_head.view(batch, num_kv_heads, q_heads // num_kv_heads, seq_len).any(2)
    return union | protected[:, None, :]


def masked_attention(logits: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax of ``logits`` ``[B, Hq, S]`` over ``mask`` ``[B, Hkv, S]``, applied to ``v`` ``[S, Hkv, dv]``.

    Returns ``[B, Hq, dv]`` float32. Takes the logits so that many selections of one query batch
    share one logit computation.
    """
    group = logits.shape[1] // mask.shape[1]
    probs = logits.masked_fill(~mask.repeat_interleave(group, dim=1), float("-inf")).softmax(-1)
    return torch.einsum("bhs,hsd->bhd", probs, group_heads(v.float(), logits.shape[1]))


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """Exact attention restricted to ``mask`` ``[B, Hkv, S]``: true RoPE, softmax over the set.

    ``q`` ``[B, Hq, d]`` post-RoPE; ``k`` ``[S, Hkv, d]`` post-RoPE; ``v`` ``[S, Hkv, dv]``.
    Returns ``[B, Hq, dv]`` float32. An all-true mask over ``[0, length)`` is dense attention.
    """
    return masked_attention(exact_logits(q, k, scale), v, mask)


def attention_recall(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact attention mass each query head keeps under ``mask``. # [B, Hq]"""
    group = probs.shape[1] // mask.shape[1]
    return (probs * mask.repeat_interleave(group, dim=1)).sum(-1)
