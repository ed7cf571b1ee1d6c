"""Which kv heads (and query heads) a tensor-parallel rank holds, and its slice of a codebook.

SGLang's ``QKVParallelLinear`` splits heads the way vLLM does: each of ``tp`` ranks takes
``Hq / tp`` consecutive query heads; with ``Hkv ≥ tp`` it takes ``Hkv / tp`` consecutive kv heads,
with ``Hkv < tp`` one kv head that ``tp / Hkv`` consecutive ranks share (``rank // replicas``).
A²ATS selects per kv head, from that head's query heads only, so a rank needs nothing from
another: its codebooks, codes and lookup tables are those of its own kv heads, and the codebook
file stays one file, sliced at load (:func:`shard_codebook`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from a2ats_sglang.method.codebook import Codebook, CodebookError


@dataclass(frozen=True)
class RankHeads:
    kv: range  # this rank's kv heads, in the model's numbering
    q: range  # its query heads

    @property
    def group(self) -> int:
        """Query heads per local kv head (the GQA group a rank's selector reduces over)."""
        return len(self.q) // len(self.kv)


def rank_heads(num_heads: int, num_kv_heads: int, tp_size: int, tp_rank: int) -> RankHeads:
    """The heads of rank ``tp_rank`` of ``tp_size``; raises :class:`CodebookError` for a split
    SGLang itself cannot make."""
    if not 0 <= tp_rank < tp_size:
        raise CodebookError(f"tensor-parallel rank {tp_rank} is not in [0, {tp_size})")
    if num_heads % tp_size:
        raise CodebookError(f"{num_heads} attention heads do not split over --tp-size {tp_size}")
    if tp_size >= num_kv_heads:
        if tp_size % num_kv_heads:
            raise CodebookError(f"{num_kv_heads} kv heads cannot be replicated evenly over --tp-size {tp_size}")
        kv = tp_rank // (tp_size // num_kv_heads)
        kv_heads = range(kv, kv + 1)
    else:
        if num_kv_heads % tp_size:
            raise CodebookError(f"{num_kv_heads} kv heads do not split over --tp-size {tp_size}")
        per = num_kv_heads // tp_size
        kv_heads = range(tp_rank * per, (tp_rank + 1) * per)
    per_q = num_heads // tp_size
    return RankHeads(kv_heads, range(tp_rank * per_q, (tp_rank + 1) * per_q))


def shard_codebook(book: Codebook, heads: RankHeads) -> Codebook:
    """The codebook of ``heads.kv`` only, as a rank's backend holds it: its model identity says
    how many heads the rank has (so every size derived from it is per rank)."""
    kv = slice(heads.kv.start, heads.kv.stop)
    model = replace(book.meta.model, num_kv_heads=len(heads.kv), num_attention_heads=len(heads.q))
    return Codebook(replace(book.meta, model=model), book.centroids_z[:, kv].contiguous(),
                    book.chol[:, kv].contiguous(), book.chol_inv[:, kv].contiguous())
