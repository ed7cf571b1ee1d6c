"""Per-token scores a selector ranks: exact logits, codeword lookup tables, Quest page bounds.

WRoPE scoring (A²ATS) builds on these in :mod:`a2ats_sglang.method.wrope`.

Shapes: a batch of ``B`` decode queries over one sequence of ``S`` tokens. Queries are
``[B, Hq, d]``, keys ``[S, Hkv, d]``; query head ``h`` reads kv head ``h // group``.
Every score here is a logit (already multiplied by the softmax scale).
"""

from __future__ import annotations

import torch


def group_heads(keys: torch.Tensor, num_q_heads: int) -> torch.Tensor:
    """``[S, Hkv, d]`` (keys or values) → ``[Hq, S, d]``, each kv head repeated over its group."""
    group = num_q_heads // keys.shape[1]
    return keys.permute(1, 0, 2).repeat_interleave(group, dim=0)


def exact_logits(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """True logits of post-RoPE queries against post-RoPE keys. # [B, Hq, S] float32"""
    return torch.einsum("bhd,hsd->bhs", q.float(), group_heads(k.float(), q.shape[1])) * scale


def causal_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Which tokens each query may see: ``[0, length)``. # [B, S] bool"""
    return torch.arange(seq_len, device=lengths.device)[None, :] < lengths[:, None]


def exact_probs(q: torch.Tensor, k: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax of :func:`exact_logits`. # [B, Hq, S] float32"""
    logits = exact_logits(q, k, scale)
    logits = logits.masked_fill(~causal_mask(lengths, k.shape[0])[:, None, :], float("-inf"))
    return logits.softmax(-1)


def lookup_table(q_w: torch.Tensor, decoded: torch.Tensor, scale: float) -> torch.Tensor:
    """Each query head against every codeword of its kv head. # [B, Hq, size] float32

    ``decoded``: ``[Hkv, size, d]`` codewords in key space (``Codebook.decoded[layer]``).
    """
    group = q_w.shape[1] // decoded.shape[0]
    cw = decoded.float().repeat_interleave(group, dim=0)  # [Hq, size, d]
    return torch.einsum("bhd,hcd->bhc", q_w.float(), cw) * scale


def quest_page_bounds(q: torch.Tensor, k: torch.Tensor, page_size: int, scale: float) -> torch.Tensor:
    """Quest's upper bound of ``q·k`` over each page from per-channel key min/max.

    Returns the bound broadcast back to tokens so selectors work per token: ``[B, Hq, S]``
    (every token of a page carries the page's bound).
    """
    seq_len, kv_heads, dim = k.shape
    pages = -(-seq_len // page_size)
    pad = pages * page_size - seq_len
    kf = k.float()
    lo = torch.nn.functional.pad(kf, (0, 0, 0, 0, 0, pad), value=float("inf"))
    hi = torch.nn.functional.pad(kf, (0, 0, 0, 0, 0, pad), value=float("-inf"))
    kmin = lo.view(pages, page_size, kv_heads, dim).amin(1)  # [P, Hkv, d]
    kmax = hi.view(pages, page_size, kv_heads, dim).amax(1)
    kmin, kmax = group_heads(kmin, q.shape[1]), group_heads(kmax, q.shape[1])  # [Hq, P, d]
    qf = q.float()[:, :, None, :]  # [B, Hq, 1, d]
    bound = torch.maximum(qf * kmin[None], qf * kmax[None]).sum(-1) * scale  # [B, Hq, P]
    return bound.repeat_interleave(page_size, dim=-1)[..., :seq_len]
