"""The suite's workloads: what long-context users run, as seeded token-id requests.

Every side gets exactly the same requests (token ids from a seeded generator, greedy, EOS
ignored), sent through SGLang's native ``/generate`` with streaming, so TTFT and TPOT are
measured per request by the client and the cached prompt tokens come from each reply.

- ``random``: one wave of independent prompts at the largest concurrency the server's KV pool
  holds (``⌊capacity / (input + output)⌋``, capped by its running-request limit).
- ``multi_turn``: conversations, each a distinct document followed by turns of a question and
  an answer appended to the history; a conversation's turns go one after another, all
  conversations at once, so their turns interleave at the server.
- ``shared_document``: questions over one document, sent at once after one warm-up request
  that puts the document in the prefix cache.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from benchmarks.client import Endpoint, TokenCompletion

TOKEN_RANGE = (1000, 30000)  # ids every supported tokenizer has (SmolLM2's vocabulary is 49,152)
KINDS = ("random", "multi_turn", "shared_document")


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # a model directory name under the suite's --models-dir
    kind: str
    input_len: int  # prompt tokens (random), document tokens (multi_turn, shared_document)
    output_len: int  # tokens per answer
    sides: tuple[str, ...]
    conversations: int = 0  # multi_turn
    turns: int = 0  # multi_turn
    question_len: int = 0  # multi_turn, shared_document
    questions: int = 0  # shared_document

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (0, ()) and k not in ("name", "sides")}


class Request(NamedTuple):
    """One timed request as the client saw it."""

    group: int  # conversation, or request index
    turn: int
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    ttft: float
    e2e: float


class Run(NamedTuple):
    requests: list[Request]
    seconds: float  # wall time of the timed requests
    concurrency: int  # requests (or conversations) sent at once


class DoesNotFit(RuntimeError):
    """The server's KV pool cannot hold one request of the workload."""


def token_ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(*TOKEN_RANGE) for _ in range(n)]


def _record(group: int, turn: int, c: TokenCompletion) -> Request:
    return Request(group, turn, c.prompt_tokens, c.cached_tokens, len(c.output_ids), c.ttft, c.e2e)


def _parallel(n: int, fn: Callable[[int], list[Request]]) -> tuple[list[Request], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(fn, range(n)))  # re-raises the first failure
    return [r for rs in results for r in rs], time.perf_counter() - started


def run_workload(w: Workload, endpoint: Callable[[], Endpoint], capacity: int, max_running: int, seed: int = 0) -> Run:
    """Send ``w``'s requests; ``endpoint()`` makes one client per thread (``requests`` sessions
    are not shared between threads). Each workload's prompts are its own (seeded by its name),
    so one never finds another's in a server's prefix cache."""
    seed = zlib.crc32(w.name.encode()) * 7919 + seed
    if w.kind == "random":
        concurrency = min(max_running, capacity // (w.input_len + w.output_len))
        if concurrency < 1:
            raise DoesNotFit(f"one request needs {w.input_len + w.output_len} tokens; the KV capacity is {capacity}")

        def one(i: int) -> list[Request]:
            return [_record(i, 0, endpoint().generate_ids(token_ids(seed * 1_000_003 + i, w.input_len), w.output_len))]

        requests, seconds = _parallel(concurrency, one)
        return Run(requests, seconds, concurrency)
    if w.kind == "multi_turn":

        def conversation(i: int) -> list[Request]:
            client, history, out = endpoint(), token_ids(seed * 1_000_003 + i, w.input_len), []
            for turn in range(w.turns):
                history = history + token_ids((seed * 1_000_003 + i) * 101 + turn + 1, w.question_len)
                reply = client.generate_ids(history, w.output_len)
                out.append(_record(i, turn, reply))
                history = history + reply.output_ids
            return out

        requests, seconds = _parallel(w.conversations, conversation)
        return Run(requests, seconds, w.conversations)
    if w.kind == "shared_document":
        document = token_ids(seed * 1_000_003, w.input_len)
        questions = [token_ids(seed * 1_000_003 + 1 + q, w.question_len) for q in range(w.questions + 1)]
        endpoint().generate_ids(document + questions[-1], 1)  # warm-up: the document enters the cache

        def ask(q: int) -> list[Request]:
            return [_record(q, 0, endpoint().generate_ids(document + questions[q], w.output_len))]

        requests, seconds = _parallel(w.questions, ask)
        return Run(requests, seconds, w.questions)
    raise ValueError(f"unknown workload kind {w.kind!r} (known: {', '.join(KINDS)})")


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(1000 * x, 1)


def client_metrics(run: Run) -> dict[str, Any]:
    """What the client measured: throughput, TTFT and TPOT percentiles, prompt tokens."""
    reqs = run.requests
    out_tokens = sum(r.output_tokens for r in reqs)
    ttft = [r.ttft for r in reqs]
    tpot = [(r.e2e - r.ttft) / (r.output_tokens - 1) for r in reqs if r.output_tokens > 1]
    metrics: dict[str, Any] = {
        "total_s": round(run.seconds, 2),
        "requests": len(reqs),
        "concurrency": run.concurrency,
        "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / run.seconds, 1) if run.seconds > 0 else None,
        "requests_per_s": round(len(reqs) / run.seconds, 3) if run.seconds > 0 else None,
        "ttft_p50_ms": _ms(_percentile(ttft, 0.5)),
        "ttft_p99_ms": _ms(_percentile(ttft, 0.99)),
        "tpot_p50_ms": _ms(_percentile(tpot, 0.5)),
        "tpot_p99_ms": _ms(_percentile(tpot, 0.99)),
        "prompt_tokens_computed": sum(r.prompt_tokens - r.cached_tokens for r in reqs),
        "prompt_tokens_cached": sum(r.cached_tokens for r in reqs),
    }
    turns = sorted({r.turn for r in reqs})
    if len(turns) > 1:  # multi-turn: the first turn carries the document's prefill
        metrics["ttft_p50_ms_by_turn"] = [_ms(_percentile([r.ttft for r in reqs if r.turn == t], 0.5)) for t in turns]
    return metrics
