"""Admit prefills against offload mode's GPU staging and shared cache, not only the host pool.

Target: ``sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req`` (SGLang 0.5.17), which
adds one waiting request to the next prefill batch if SGLang's token budgets allow. In offload
mode a prefill reads its prompt's K/V from GPU staging: the batch's new tokens, the earlier
chunks of a chunked prompt, and a new request's cached prefix (a radix-cache hit), brought back
from the host pool. SGLang counts only the (host-sized) logical pool, so a batch of prefix hits
(32 questions over one 32K document) could need many times the staging there is. Requests
that match the same radix-tree node share its prefix, staged once (the key is recorded for the
backend in ``Staging.prefix_keys``). A request whose (unshared) prefix and first chunk do not fit
what the batch has left is not added (SGLang takes it in a later batch); the first request of a
batch always fits, since staging holds a context plus a chunk
(:func:`~a2ats_sglang.runtime.tiered.plan.staging_tokens`).

With GPU homes (``--a2ats-gpu-homes``) the shared cache is not sized for every request row at the
whole context: a request is added only while the top-K widths of the running requests, the
batch's and its own, each at its final length (prompt plus ``max_new_tokens``), sum to at most
the plan's ``pick_limit`` (:class:`~a2ats_sglang.runtime.tiered.plan.PickBudget`), so every step's
picks find cells. A request alone (nothing running, nothing in the batch) always goes: the
cache holds several whole-context widths.
"""

from __future__ import annotations

import sys

TARGET = "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req"
SIGNATURE = "(self, req: 'Req', has_chunked_req: 'bool', truncation_align_size: 'Optional[int]')"

_installed = False  # set by install_around


def staging_left(adder, staging) -> int:
    """Staging slots this batch may still use: all but what the requests already in it hold
    (a chunked prompt's earlier chunks) and add (their new tokens)."""
    left = getattr(adder, "_a2ats_staging_left", None)
    if left is None:
        left = staging.size - staging.in_use()
        for r in adder.can_run_list:
            left -= r.extend_range.length
        # slots held by requests past their prefill come back at the next extend
        left += sum(staging.held_tokens(rid) for rid in staging.held() if rid not in {r.rid for r in adder.can_run_list})
    return left


def picks_of(req, picks) -> int:
    """A request's top-K width at its final length (``max_new_tokens`` None: the context's)."""
    new = req.sampling_params.max_new_tokens
    return picks.of(len(req.origin_input_ids) + (new if new is not None else picks.context))


def picks_left(adder, picks) -> int:
    """Widths the batch may still add: the limit less the running requests' and the batch's."""
    left = getattr(adder, "_a2ats_picks_left", None)
    if left is None:
        running = getattr(adder.running_batch, "reqs", None) or []
        left = picks.limit - sum(picks_of(r, picks) for r in [*running, *adder.can_run_list])
    return left


def sharing_key(req):
    """Requests whose match ends at the same radix-tree node share its cached prefix, staged once.
    The node's own serial number, not ``id()``: a staged entry outlives its users' requests until
    the next extend, and a node evicted meanwhile may leave its address to a new one."""
    prefix = len(req.prefix_indices)
    return (req.last_node.id, prefix) if prefix else None


def admit(original, adder, req, has_chunked_req: bool, truncation_align_size):
    from a2ats_sglang.runtime.tiered.plan import current_pick_budget, current_staging

    staging = current_staging()
    if staging is None:
        return original(adder, req, has_chunked_req, truncation_align_size)
    from sglang.srt.managers.schedule_policy import AddReqResult

    picks = current_pick_budget()
    if picks is not None:
        left_picks, need_picks = picks_left(adder, picks), picks_of(req, picks)
        adder._a2ats_picks_left = left_picks
        busy = adder.can_run_list or getattr(adder.running_batch, "reqs", None)
        if busy and need_picks > left_picks:
            return AddReqResult.OTHER

    left = staging_left(adder, staging)
    counted = getattr(adder, "_a2ats_prefixes", set())
    prefix = len(req.prefix_indices)
    key = sharing_key(req)
    prefix_need = prefix if key is not None and key not in counted and not staging.is_staged(key) else 0
    first = len(req.full_untruncated_fill_ids) - prefix
    if adder.rem_chunk_tokens is not None:
        first = min(first, adder.rem_chunk_tokens)
    adder._a2ats_staging_left, adder._a2ats_prefixes = left, counted
    if adder.can_run_list and prefix_need + first > left:
        return AddReqResult.OTHER
    result = original(adder, req, has_chunked_req, truncation_align_size)
    if adder.can_run_list and adder.can_run_list[-1] is req:  # added, maybe cut to a chunk
        adder._a2ats_staging_left = left - prefix_need - req.extend_range.length
        if picks is not None:
            adder._a2ats_picks_left = left_picks - need_picks
        if key is not None:
            counted.add(key)
            staging.prefix_keys[req.rid] = key
    return result


def install() -> None:
    from a2ats_sglang.patches import install_around

    install_around(sys.modules[__name__], admit)
