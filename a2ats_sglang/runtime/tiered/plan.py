"""The offload plan of this process: decided once where SGLang sizes its pools, read by the
patches that build the pools and by the backend.

SGLang sizes the KV pool (``config_from_budget``), then the request pool
(``resolve_max_num_reqs``), then builds the KV pool (``_build_mha_kv_pool``), each in its own
call on the scheduler process; the plan made at the first is what the later ones follow. The
pool's staging area is kept here too: the scheduler's prefill admission counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from a2ats_sglang.runtime.memory import OffloadPlan
from a2ats_sglang.runtime.tiered.staging import Staging

_plan: OffloadPlan | None = None
_staging: Staging | None = None


@dataclass(frozen=True)
class PickBudget:
    """What the shared cache admits with GPU homes: running requests whose top-K widths at
    their final lengths (``width(length)``, a length at most ``context``) sum to at most ``limit``."""

    width: Callable[[int], int]
    limit: int
    context: int

    def of(self, length: int) -> int:
        return self.width(min(length, self.context))


_picks: PickBudget | None = None


def set_pick_budget(picks: PickBudget | None) -> None:
    global _picks
    _picks = picks


def current_pick_budget() -> PickBudget | None:
    return _picks


def set_plan(plan: OffloadPlan | None) -> None:
    global _plan
    _plan = plan


def current_plan() -> OffloadPlan | None:
    return _plan


def set_staging(staging: Staging | None) -> None:
    """The staging area of this process's offload pool (its scheduler admits against it)."""
    global _staging
    _staging = staging


def current_staging() -> Staging | None:
    return _staging


def staging_tokens(context_len: int, chunked_prefill_size: int | None, max_prefill_tokens: int) -> int:
    """GPU slots for prefill staging: the one chunked prompt in flight (up to the whole context)
    plus the new tokens of one prefill batch."""
    chunk = chunked_prefill_size if chunked_prefill_size and chunked_prefill_size > 0 else 0
    return context_len + max(chunk, max_prefill_tokens)
