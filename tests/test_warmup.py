"""The start-up warm-up reaches every encode tile and the prefix-hit path, and runs through
SGLang's tokenizer manager as ``--warmups a2ats``."""

from __future__ import annotations

import asyncio

import pytest

from a2ats_sglang.runtime import warmup


def test_prompt_sizes_cover_every_tile_with_and_without_a_multiple_of_16() -> None:
    from a2ats_sglang.kernels.encode import key_tile

    tiles = {key_tile(n) for n in range(1, 8193)}
    seen = {(key_tile(n), n % 16 == 0) for n in warmup.PROMPT_SIZES}
    assert seen == {(t, div) for t in tiles for div in (True, False)}


def test_prefix_hits_share_the_document_and_nothing_else_does() -> None:
    waves = warmup.requests()
    doc = waves[0][0][0]
    hits = [w for w in waves if all(p[: len(doc)] == doc and len(p) > len(doc) for p, _ in w)]
    assert [len(w) for w in hits] == [1, 2, 4]  # prefix tails of 16, 32 and 64 keys
    assert waves[0][0][1] >= 32  # decode crosses at least two encode groups of 16
    firsts = [p[0] for w in waves[len(hits) + 1 :] for p, _ in w]
    assert doc[0] not in firsts and len(set(firsts)) == len(firsts)  # no accidental radix hits
    assert all(0 < t < 1000 for w in waves for p, _ in w for t in p)


class FakeTokenizerManager:
    def __init__(self, context_len: int = 1 << 20, fail_after: int | None = None) -> None:
        self.sent, self.context_len, self.fail_after = [], context_len, fail_after

    async def generate_request(self, req, request):  # noqa: ANN001, ANN201
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ValueError("the scheduler refused it")
        self.sent.append((list(req.input_ids), req.sampling_params["max_new_tokens"]))
        yield {"text": ""}


def test_runs_every_request_through_the_tokenizer_manager() -> None:
    tm = FakeTokenizerManager()
    asyncio.run(warmup.run("null", tm))
    assert sorted(map(repr, tm.sent)) == sorted(repr(r) for w in warmup.requests() for r in w)
    skipped = FakeTokenizerManager()
    asyncio.run(warmup.run("prefill", skipped))
    assert skipped.sent == []


def test_prompts_past_the_context_are_left_out_and_a_failure_does_not_stop_the_start() -> None:
    short = FakeTokenizerManager(context_len=512)
    asyncio.run(warmup.run("null", short))
    assert short.sent and max(len(p) + n for p, n in short.sent) < 512
    failing = FakeTokenizerManager(fail_after=2)
    asyncio.run(warmup.run("null", failing))  # logs a warning and returns
    assert len(failing.sent) == 2


def test_registered_as_an_sglang_warmup() -> None:
    pytest.importorskip("sglang")
    from sglang.srt.entrypoints import warmup as sglang_warmup

    warmup.register()
    assert sglang_warmup._warmup_registry[warmup.NAME] is warmup.run
