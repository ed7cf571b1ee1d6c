"""Offload mode end to end on a GPU: a server whose host KV pool holds ~4.6K tokens of SmolLM2.

- A prompt longer than the host pool is refused with SGLang's clear error; the server lives on.
- Requests that together exceed the pool wait and all finish.
- Streams aborted mid-decode leave no slot behind: SGLang's idle check (which stops the
  scheduler on a leaked logical slot) stays quiet, every pool gauge is back to zero, and the
  server keeps serving.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.gpu

PORT = 30091
SERVER = ("offload-small", PORT, ["--a2ats-offload", "--a2ats-host-kv-gb", "0.1", "--enable-metrics",
                                  "--mem-fraction-static", "0.2", "--cuda-graph-max-bs", "8"])


def generate(server, ids: list[int], max_new_tokens: int = 8, **kw) -> requests.Response:
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}}
    return requests.post(f"{server.url}/generate", json=body | kw, timeout=300, **({"stream": True} if kw.get("stream") else {}))


def metric(server, name: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    values = [float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    assert values, f"{name} not exported"
    return values[0]


def capacity(server) -> int:
    return int(requests.get(f"{server.url}/server_info", timeout=30).json()["max_total_num_tokens"])


def prompt(n: int, seed: int = 0) -> list[int]:
    return [(seed * 7919 + i * 104729) % 40000 + 100 for i in range(n)]


def test_prompt_beyond_the_host_pool_is_refused_and_the_server_lives_on(server) -> None:
    cap = capacity(server)
    assert 3000 < cap < 6000, cap
    r = generate(server, prompt(cap + 500))
    assert r.status_code == 400 or "error" in r.text.lower(), r.text
    assert "exceeds the maximum allowed length" in r.text or "longer than" in r.text, r.text
    ok = generate(server, prompt(100))
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 8


def test_requests_beyond_capacity_together_wait_and_all_finish(server) -> None:
    cap = capacity(server)
    n = cap * 2 // 5  # three of them do not fit at once
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda s: generate(server, prompt(n, s), 32), range(3)))
    assert [r.status_code for r in results] == [200] * 3
    assert [len(r.json()["output_ids"]) for r in results] == [32] * 3


def test_aborted_streams_leave_no_slot_behind(server) -> None:
    def abort_after_a_few_chunks(seed: int) -> int:
        r = generate(server, prompt(600, seed), 2000, stream=True)
        chunks = 0
        for _ in r.iter_lines():
            chunks += 1
            if chunks >= 5:
                break
        r.close()  # SGLang aborts a request whose client went away
        return chunks

    with ThreadPoolExecutor(4) as pool:
        assert all(c >= 5 for c in pool.map(abort_after_a_few_chunks, range(4)))
    deadline = time.time() + 60
    while metric(server, "sglang:num_running_reqs") > 0 and time.time() < deadline:
        time.sleep(1)
    time.sleep(5)  # SGLang's idle memory check runs now; a leaked slot would stop the scheduler
    assert requests.get(f"{server.url}/health", timeout=30).status_code == 200
    assert metric(server, "sglang:num_running_reqs") == 0
    assert metric(server, "sglang:token_usage") == 0.0, "every logical (host) slot is free again"
    ok = generate(server, prompt(100))
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 8


def test_server_info_reports_the_tiers_and_the_hit_rate(server) -> None:
    assert generate(server, prompt(700, 9), 64).status_code == 200
    time.sleep(3)  # the hit/miss counters are read a sample (2 s) behind the GPU
    info = requests.get(f"{server.url}/server_info", timeout=30).json()
    state = info["internal_states"][0]["a2ats"]
    assert state["mode"] == "offload"
    assert state["kv_capacity_tokens"] == {"gpu": 0, "host": info["max_total_num_tokens"]}
    off = state["offload"]
    assert off["decode_steps"] > 0 and 0.0 < off["hot_hit_rate"] <= 1.0
    assert off["host_pool_bytes"] > 0 and off["hot_buffers"] == off["max_running_requests"] + 1
    assert state["codes_bytes_per_token"] == 30 * 3 * 2  # SmolLM2-135M: 30 layers, 3 kv heads, int16
