"""A long, messy load against a running server; at the end nothing lost, nothing leaked.

    python -m benchmarks.soak --base-url http://127.0.0.1:30000 --duration 600

The load, for ``--duration`` seconds from ``--workers`` threads:

- prompts of 100 to ``--max-input`` tokens (log-uniform), a third of them behind one of a few
  shared documents (radix hits); seeded token ids on ``/generate``, streamed or not, with
  ``n`` of 1 or 2, temperature 0 or 0.8, random ``max_new_tokens`` (EOS ignored, so a complete
  answer has exactly that many tokens); English prose on ``/v1/chat/completions``;
- 10 % of the streams dropped by the client: before the first token, or after a few;
- every ``--burst-every`` seconds a burst of requests holding twice the KV capacity, which
  must queue; a prompt longer than the capacity and one longer than the context, which must
  get a clear 4xx;
- the bad-input battery (``benchmarks.bad_inputs``) before and after.

Before the load a fixed set of greedy requests is answered one by one by the cold server; after
it, with the cache flushed, the same set again, and the answers must be equal. Then, with the cache flushed and the server idle,
SGLang's pool gauges must be back at their start values. Writes ``{"meta", "results"}`` with
requests sent, completed and aborted, errors by kind, leaks per gauge, mismatches and crashes;
exits 1 if anything was lost, leaked, different or dead.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from benchmarks import bad_inputs

TOKEN_RANGE = (1000, 30000)  # ids every supported tokenizer has
MAX_BURST = 256  # requests in one burst
GAUGES = ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "a2ats:host_pool_used_tokens",
          "a2ats:staging_used_tokens")


@dataclass
class Tally:
    """What the load did, counted from every worker thread."""

    sent: int = 0
    completed: int = 0
    aborted: int = 0
    lost: int = 0  # answered 200 but incomplete
    errors: Counter = field(default_factory=Counter)  # "HTTP 400: <message start>" → count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.sent += 1
            if outcome == "completed":
                self.completed += 1
            elif outcome == "aborted":
                self.aborted += 1
            elif outcome == "lost":
                self.lost += 1
                self.errors[f"lost: {detail}"] += 1
            else:
                self.errors[detail] += 1


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(*TOKEN_RANGE) for _ in range(n)]


def gauges(url: str) -> dict[str, float]:
    """SGLang's (and a2ats's) pool gauges from ``/metrics``; those not exported are left out."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    out = {}
    for name in GAUGES:
        m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        if m:
            out[name] = float(m.group(1))
    return out


def _error(r: requests.Response) -> str:
    return f"HTTP {r.status_code}: {bad_inputs.error_message(r)[:60]}"


def generate(url: str, prompt: list[int], max_new: int, *, stream: bool, n: int = 1, temperature: float = 0.0,
             drop_after: int | None = None) -> tuple[str, str, list[list[int]]]:
    """One ``/generate`` request. → (completed | aborted | lost | error, detail, output ids per choice)

    ``drop_after``: the client closes the stream after that many events (0: before the first)."""
    body = {"input_ids": prompt, "stream": stream,
            "sampling_params": {"max_new_tokens": max_new, "temperature": temperature, "ignore_eos": True, "n": n}}
    try:
        r = requests.post(f"{url}/generate", json=body, timeout=1800, stream=stream)
        if r.status_code != 200:
            return "error", _error(r), []
        if not stream:
            answers = r.json()
            answers = answers if isinstance(answers, list) else [answers]
        else:
            answers, events = {}, 0
            for line in r.iter_lines():
                if drop_after is not None and events >= drop_after:
                    r.close()
                    return "aborted", "", []
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                event = json.loads(line[6:])
                answers[event.get("index", 0)] = event
                events += 1
            answers = [answers[i] for i in sorted(answers)]
    except requests.RequestException as e:
        return "error", f"{type(e).__name__}", []
    outputs = [a.get("output_ids", []) for a in answers]
    if len(outputs) != n or any(len(o) != max_new for o in outputs):
        return "lost", f"{[len(o) for o in outputs]} of {max_new} tokens × {n}", outputs
    return "completed", "", outputs


def chat(url: str, model: str, text: str, max_tokens: int, *, stream: bool) -> tuple[str, str]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0.8, "stream": stream}
    try:
        r = requests.post(f"{url}/v1/chat/completions", json=body, timeout=1800, stream=stream)
        if r.status_code != 200:
            return "error", _error(r)
        if stream:
            done = any(line == b"data: [DONE]" for line in r.iter_lines())
            return ("completed", "") if done else ("lost", "stream ended without [DONE]")
        choice = r.json()["choices"][0]
        return ("completed", "") if choice.get("finish_reason") in ("stop", "length") else ("lost", str(choice)[:60])
    except (requests.RequestException, ValueError, KeyError) as e:
        return "error", f"{type(e).__name__}"


def prose() -> str:
    from pydoc_data.topics import topics

    return " ".join(topics.values())


@dataclass(frozen=True)
class Plan:
    """The load's knobs (``--help``)."""

    max_input: int
    capacity: int
    context: int
    abort_rate: float = 0.10
    share_rate: float = 1 / 3
    documents: int = 4


def one_request(url: str, model: str, plan: Plan, rng: random.Random, docs: list[list[int]], text: str,
                tally: Tally) -> None:
    """A random request of the mix, counted into ``tally``."""
    if rng.random() < 0.2:  # OpenAI chat, prose
        start = rng.randrange(0, len(text) - 4000)
        outcome, detail = chat(url, model, text[start : start + rng.randrange(200, 4000)], rng.randrange(1, 128),
                               stream=rng.random() < 0.5)
        tally.add(outcome, detail)
        return
    n = max(100, min(plan.max_input, int(math.exp(rng.uniform(math.log(100), math.log(plan.max_input))))))
    prompt = ids(rng, n)
    if rng.random() < plan.share_rate:
        doc = docs[rng.randrange(len(docs))]
        prompt = doc + prompt[: max(1, n - len(doc))]
    max_new = rng.randrange(1, 257)
    prompt = prompt[: max(1, min(plan.context, plan.capacity) - max_new - 8)]
    stream = rng.random() < 0.6
    drop = None
    if stream and rng.random() < plan.abort_rate / 0.6:
        drop = rng.choice([0, 0, 1, 3, 10])
    outcome, detail, _ = generate(url, prompt, max_new, stream=stream, n=rng.choice([1, 1, 1, 2]),
                                  temperature=rng.choice([0.0, 0.8]), drop_after=drop)
    tally.add(outcome, detail)


def fixed_set(seed: int, count: int = 8) -> list[tuple[list[int], int]]:
    """Greedy requests answered before and after the load."""
    rng = random.Random(seed * 7 + 1)
    return [(ids(rng, rng.randrange(100, 3000)), 24) for _ in range(count)]


def answers(url: str, requests_: list[tuple[list[int], int]]) -> list[list[int]]:
    out = []
    for prompt, max_new in requests_:
        outcome, detail, outputs = generate(url, prompt, max_new, stream=False)
        out.append(outputs[0] if outcome == "completed" else [f"{outcome}: {detail}"])
    return out


class ServerDied(RuntimeError):
    """A bad input took the server down: the load would only count refused connections."""

    def __init__(self, case: str, outcomes: list[bad_inputs.Outcome]):
        super().__init__(f"the server died on the bad input {case!r}")
        self.case, self.outcomes = case, outcomes


def wait_idle(url: str, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        g = gauges(url)
        if g.get("sglang:num_running_reqs", 0) == 0 and g.get("sglang:num_queue_reqs", 0) == 0:
            return
        time.sleep(1)


def run(url: str, duration: float, workers: int, seed: int, max_input: int, burst_every: float,
        abort_rate: float = 0.10, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole soak against ``url``. → the results object"""
    vocab, context, model = bad_inputs.server_shape(url)
    capacity = int(requests.get(f"{url}/server_info", timeout=30).json()["max_total_num_tokens"])
    plan = Plan(min(max_input, context - 300), capacity, context, abort_rate)
    rng = random.Random(seed)
    docs = [ids(rng, rng.randrange(1000, max(1001, min(20000, plan.max_input // 2)))) for _ in range(plan.documents)]
    text = prose()
    fixed = fixed_set(seed)
    progress(f"[soak] {url}: capacity {capacity} tokens, context {context}; cold answers of {len(fixed)} requests")
    cold = answers(url, fixed)
    start_gauges = gauges(url)
    if "sglang:token_usage" not in start_gauges:  # the leak check would pass on nothing
        raise SystemExit("benchmarks.soak: error: the server exports no pool gauges: start it with --enable-metrics")
    bad_before = bad_inputs.run_all(url)
    killer = next((o for o in bad_before if not o.alive), None)
    if killer is not None:
        raise ServerDied(killer.name, bad_before)
    tally = Tally()
    over = [bad_inputs.BadInput(name, "/generate", json.dumps({"input_ids": [100] * n,
                                                                "sampling_params": {"max_new_tokens": 4}}).encode())
            for name, n in (("prompt over the KV capacity", capacity + 64), ("prompt over the context", context + 64))]
    over_limits = [bad_inputs.run_case(url, case) for case in over]  # each must get a clear 4xx
    deadline = time.time() + duration
    next_burst = time.time() + burst_every
    burst_lock = threading.Lock()
    bursts: list[int] = []  # tokens each burst asked for at once

    def worker(w: int) -> None:
        nonlocal next_burst
        wrng = random.Random(seed * 1000 + w)
        while time.time() < deadline:
            with burst_lock:
                burst = time.time() >= next_burst
                if burst:
                    next_burst = time.time() + burst_every
            if burst:  # twice the capacity at once (up to MAX_BURST requests): it must queue, and all finish
                size = max(100, min(plan.max_input, capacity // 8))
                jobs = [(ids(wrng, size), 64) for _ in range(min(MAX_BURST, -(-2 * capacity // (size + 64))))]
                with ThreadPoolExecutor(len(jobs)) as pool:
                    for outcome, detail, _ in pool.map(lambda j: generate(url, j[0], j[1], stream=False), jobs):
                        tally.add(outcome, detail)
                with tally.lock:
                    bursts.append(len(jobs) * (size + 64))
                progress(f"[soak] burst of {len(jobs)} × {size} tokens done")
                continue
            one_request(url, model, plan, wrng, docs, text, tally)

    started = time.time()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(worker, range(workers)))
    progress(f"[soak] load done in {time.time() - started:.0f} s: {tally.sent} sent, {tally.completed} completed, "
             f"{tally.aborted} aborted")
    bad_after = bad_inputs.run_all(url)
    wait_idle(url)  # dropped streams may still be winding down; SGLang flushes an idle cache only
    requests.post(f"{url}/flush_cache", timeout=60)
    warm = answers(url, fixed)  # cold again: the cache no longer holds the first answers' prompts
    wait_idle(url)
    requests.post(f"{url}/flush_cache", timeout=60)
    wait_idle(url)
    time.sleep(5)  # SGLang's idle memory check runs now: a leaked slot stops its scheduler
    alive = bad_inputs.alive(url)
    end_gauges = gauges(url) if alive else {}
    leaks = {k: end_gauges.get(k, float("nan")) - v for k, v in start_gauges.items()}
    mismatches = sum(a != b for a, b in zip(cold, warm))
    refused = [o for o in bad_before + over_limits + bad_after if o.verdict != "clear_error" or not o.alive]
    return {
        "requests_sent": tally.sent, "completed": tally.completed, "aborted_by_client": tally.aborted,
        "lost": tally.lost, "errors_by_kind": dict(tally.errors.most_common()),
        "bad_inputs": {"cases": 2 * len(bad_before) + len(over_limits), "not_clear": [o.__dict__ for o in refused]},
        "pool_gauges_start": start_gauges, "pool_gauges_end": end_gauges, "leaks": leaks,
        "kv_capacity_tokens": capacity, "burst_tokens": bursts,
        "fixed_requests": len(fixed), "mismatches": mismatches, "crashes": 0 if alive else 1,
        "duration_s": round(time.time() - started, 1), "workers": workers, "seed": seed,
    }


def passed(r: dict[str, Any]) -> bool:
    """Nothing lost or failed in the load, every bad input refused clearly, the same answers, no
    gauge off its start value, the server alive."""
    return (r["lost"] == 0 and not r["errors_by_kind"] and not r["bad_inputs"]["not_clear"]
            and r["mismatches"] == 0 and r["crashes"] == 0 and all(v == 0 for v in r["leaks"].values()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="a running server started with --enable-metrics")
    p.add_argument("--duration", type=float, default=600, help="seconds of mixed load")
    p.add_argument("--workers", type=int, default=16, help="client threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-input", type=int, default=60000, help="longest prompt, in tokens (capped by the context)")
    p.add_argument("--burst-every", type=float, default=60, help="seconds between bursts above the capacity")
    p.add_argument("--abort-rate", type=float, default=0.10, help="share of requests the client drops")
    p.add_argument("--out", default=None, help="result file (with meta); default: print only")
    args = p.parse_args(argv)
    url = args.base_url.rstrip("/")
    try:
        model = bad_inputs.server_shape(url)[2]
        results = run(url, args.duration, args.workers, args.seed, args.max_input, args.burst_every, args.abort_rate)
    except ServerDied as e:  # stop at once, naming the request that did it
        results = {"crashes": 1, "error": str(e), "killed_by": e.case,
                   "bad_inputs": {"cases": len(e.outcomes), "outcomes": [o.__dict__ for o in e.outcomes]}}
    except requests.RequestException as e:  # the server stopped answering
        model = locals().get("model", "unknown")
        results = {"crashes": 1, "error": f"{type(e).__name__}: {e}"[:300]}
    print(json.dumps(results, indent=1))
    if args.out:
        from benchmarks.meta import write_results

        workload = {k: getattr(args, k) for k in ("duration", "workers", "seed", "max_input", "burst_every", "abort_rate")}
        write_results(args.out, "cuda", model, workload, results)
    ok = "error" not in results and passed(results)
    print("[soak] PASSED" if ok else "[soak] FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
