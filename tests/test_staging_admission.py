"""Prefill admission in offload mode counts GPU staging: a new request's cached prefix and its
first chunk must fit what the batch leaves (patches/staging_admission.py), with SGLang's own
``AddReqResult`` and ``Range`` and a real :class:`Staging`."""

from __future__ import annotations

from itertools import count
from types import SimpleNamespace

import pytest
import torch

from a2ats_sglang.runtime.tiered.plan import set_staging
from a2ats_sglang.runtime.tiered.staging import Staging


@pytest.fixture
def staging():
    s = Staging(logical_slots=500, base_slot=1, size=100, max_reqs=4, context_len=128, device="cpu")
    set_staging(s)
    yield s
    set_staging(None)


NODE_IDS = count(1)


def node() -> SimpleNamespace:
    """A radix-tree node (its serial number is all the sharing key uses)."""
    return SimpleNamespace(id=next(NODE_IDS))


def request(rid: str, prefix: int, total: int, at: SimpleNamespace | None = None) -> SimpleNamespace:
    """A waiting request whose prompt matched ``prefix`` tokens of the radix tree, ending at node ``at``."""
    return SimpleNamespace(rid=rid, prefix_indices=torch.arange(prefix), full_untruncated_fill_ids=list(range(total)),
                           extend_range=None, last_node=node() if at is None else at)


def sglang_adds(adder, req, has_chunked_req, truncation_align_size):
    """What SGLang's add_one_req does when its own budgets allow: the request joins the batch,
    cut to the chunk budget."""
    from sglang.srt.managers.schedule_policy import AddReqResult
    from sglang.srt.utils.common import Range

    start = len(req.prefix_indices)
    end = min(len(req.full_untruncated_fill_ids), start + adder.rem_chunk_tokens)
    req.extend_range = Range(start, end)
    adder.can_run_list.append(req)
    adder.rem_chunk_tokens -= end - start
    return AddReqResult.CONTINUE


def test_requests_are_added_while_their_prefix_and_chunk_fit_staging(staging) -> None:
    from sglang.srt.managers.schedule_policy import AddReqResult

    from a2ats_sglang.patches.staging_admission import admit

    adder = SimpleNamespace(can_run_list=[], rem_chunk_tokens=50)
    a = request("a", prefix=60, total=70)  # a radix hit: 60 cached tokens, 10 new
    assert admit(sglang_adds, adder, a, False, None) == AddReqResult.CONTINUE and adder.can_run_list == [a]
    b = request("b", prefix=60, total=65)  # 65 more do not fit the 30 left
    assert admit(sglang_adds, adder, b, False, None) == AddReqResult.OTHER and adder.can_run_list == [a]
    c = request("c", prefix=0, total=200)  # no prefix: its first chunk (the 40 chunk tokens left) …
    assert admit(sglang_adds, adder, c, False, None) == AddReqResult.OTHER, "… does not fit the 30 left either"
    d = request("d", prefix=5, total=30)
    assert admit(sglang_adds, adder, d, False, None) == AddReqResult.CONTINUE and adder.can_run_list == [a, d]
    assert adder._a2ats_staging_left == 100 - 70 - 30
    assert staging.prefix_keys == {"a": (a.last_node.id, 60), "d": (d.last_node.id, 5)}, "the backend's word on sharing"


def test_requests_sharing_a_cached_document_stage_it_once(staging) -> None:
    from sglang.srt.managers.schedule_policy import AddReqResult

    from a2ats_sglang.patches.staging_admission import admit

    doc = node()  # the radix-tree node where a 60-token document ends
    adder = SimpleNamespace(can_run_list=[], rem_chunk_tokens=1000)
    questions = [request(f"q{i}", prefix=60, total=68, at=doc) for i in range(6)]
    results = [admit(sglang_adds, adder, q, False, None) for q in questions]
    assert results == [AddReqResult.CONTINUE] * 5 + [AddReqResult.OTHER], "60 + 5·8 = 100 slots: five fit"
    assert len(set(staging.prefix_keys.values())) == 1 and len(staging.prefix_keys) == 5


def test_the_first_request_always_goes_and_a_chunked_prompt_keeps_its_chunks(staging) -> None:
    from sglang.srt.managers.schedule_policy import AddReqResult
    from sglang.srt.utils.common import Range

    from a2ats_sglang.patches.staging_admission import admit

    big = request("big", prefix=90, total=120)  # alone in its batch: SGLang's own limits decide
    assert admit(sglang_adds, SimpleNamespace(can_run_list=[], rem_chunk_tokens=1000), big, False, None) == AddReqResult.CONTINUE

    # "c" prefills in chunks: 40 tokens staged by earlier chunks, 20 more in this batch
    staging.place(["c"], torch.tensor([1]), [0], [40], torch.arange(10, 50))
    chunked = SimpleNamespace(rid="c", extend_range=Range(40, 60))
    adder = SimpleNamespace(can_run_list=[chunked], rem_chunk_tokens=30)
    assert admit(sglang_adds, adder, request("e", prefix=30, total=45), True, None) == AddReqResult.OTHER  # 45 > 40
    assert adder._a2ats_staging_left == 100 - 40 - 20
    f = request("f", prefix=0, total=40)
    assert admit(sglang_adds, adder, f, True, None) == AddReqResult.CONTINUE
    assert f.extend_range.length == 30 and adder._a2ats_staging_left == 10


def test_without_offload_sglang_decides_alone() -> None:
    from a2ats_sglang.patches.staging_admission import admit

    set_staging(None)
    seen = []
    admit(lambda *a: seen.append(a), SimpleNamespace(can_run_list=[1]), "req", False, 8)
    assert len(seen) == 1


def test_sglangs_radix_cache_ends_every_match_of_a_document_at_one_node() -> None:
    """The sharing key is (the matched node, the prefix length): SGLang's RadixCache must end the
    matches of two prompts over one cached document at the same node, also after more inserts."""
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey

    cache = RadixCache(CacheInitParams(disable=False, req_to_token_pool=None, page_size=1,
                                       token_to_kv_pool_allocator=SimpleNamespace(free=lambda x: None, device="cpu")))
    doc = list(range(100, 200))
    cache.insert(InsertParams(key=RadixKey([*doc, 1, 2, 3]), value=torch.arange(1000, 1103)))

    def match(tail: list[int]):
        return cache.match_prefix(MatchPrefixParams(key=RadixKey(doc + tail)))

    a, b = match([7, 8]), match([9])
    assert len(a.device_indices) == len(b.device_indices) == 100 and a.last_device_node is b.last_device_node
    cache.insert(InsertParams(key=RadixKey([*doc, 7, 8]), value=torch.cat([torch.arange(1000, 1100), torch.tensor([5, 6])])))
    assert match([5]).last_device_node is a.last_device_node




def test_the_sharing_key_names_a_node_once_in_the_process() -> None:
    """A staged prefix stays in Staging until the next extend, after its requests finished; if its
    node is evicted meanwhile (here: the whole tree, as flush_cache does) and another document of
    the same length is cached, the new match must not take the old key, or its request would
    attend over the old document's staged K/V. ``id()`` could repeat once the old node is freed;
    the key is SGLang's node serial number, which must never repeat, also across a reset."""
    from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey

    from a2ats_sglang.patches.staging_admission import sharing_key

    cache = RadixCache(CacheInitParams(disable=False, req_to_token_pool=None, page_size=1,
                                       token_to_kv_pool_allocator=SimpleNamespace(free=lambda x: None, device="cpu")))

    def cached(doc: list[int]) -> SimpleNamespace:
        cache.insert(InsertParams(key=RadixKey(doc), value=torch.arange(1000, 1000 + len(doc))))
        m = cache.match_prefix(MatchPrefixParams(key=RadixKey([*doc, 1])))
        return SimpleNamespace(prefix_indices=m.device_indices, last_node=m.last_device_node)

    keys = []
    for first in (100, 300, 500):  # three documents of 100 tokens, the tree emptied in between
        req = cached(list(range(first, first + 100)))
        keys.append(sharing_key(req))
        assert keys[-1] == (req.last_node.id, 100)
        cache.reset()
    assert len(set(keys)) == 3 and keys == sorted(keys), "serial numbers only grow"


def test_with_gpu_homes_requests_are_admitted_while_their_top_k_widths_fit_the_cache(staging) -> None:
    """The pick limit (``PickBudget``): widths at each request's final length, the running
    requests' and the batch's, sum to at most the limit; a request alone always goes."""
    from sglang.srt.managers.schedule_policy import AddReqResult

    from a2ats_sglang.patches.staging_admission import admit
    from a2ats_sglang.runtime.tiered.plan import PickBudget, set_pick_budget

    def req(rid: str, prompt: int, new: int | None) -> SimpleNamespace:
        r = request(rid, prefix=0, total=prompt)
        r.origin_input_ids, r.sampling_params = list(range(prompt)), SimpleNamespace(max_new_tokens=new)
        return r

    set_pick_budget(PickBudget(width=lambda n: n // 2, limit=100, context=150))
    try:
        running = SimpleNamespace(reqs=[req("r", 40, 40)])  # decoding: width 40 at its final 80 tokens
        adder = SimpleNamespace(can_run_list=[], rem_chunk_tokens=1000, running_batch=running)
        assert admit(sglang_adds, adder, req("a", 30, 10), False, None) == AddReqResult.CONTINUE  # 40 + 20
        assert admit(sglang_adds, adder, req("b", 60, 30), False, None) == AddReqResult.OTHER  # + 45 > 100
        assert admit(sglang_adds, adder, req("c", 20, 50), False, None) == AddReqResult.CONTINUE  # + 35 = 95
        assert adder._a2ats_picks_left == 5 and [r.rid for r in adder.can_run_list] == ["a", "c"]
        unbounded = req("d", 10, None)  # may run to the whole context: width 75
        idle = SimpleNamespace(can_run_list=[], rem_chunk_tokens=1000, running_batch=SimpleNamespace(reqs=[]))
        assert admit(sglang_adds, idle, unbounded, False, None) == AddReqResult.CONTINUE, "alone, it goes"
        assert idle._a2ats_picks_left == 100 - 75
        assert admit(sglang_adds, idle, req("e", 60, 0), False, None) == AddReqResult.OTHER  # 30 > 25
    finally:
        set_pick_budget(None)
