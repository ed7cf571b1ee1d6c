"""Offload mode with the shared cache (``--a2ats-offload-cache shared``), end to end on a GPU:
the prefix-reuse tests of ``test_gpu_offload_prefix.py`` (a prefix hit answers as a cold
request, concurrent requests over one document, eviction under pressure, the README's forked
frontend program) against a server whose requests share one GPU cache of host K/V, and its
``/server_info`` says so. Those tests compare the server with itself; one more compares its
answers with a buffers-mode server's (per-request hot buffers), token for token."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from test_gpu_offload_prefix import DOC, flush, ids
from test_gpu_offload_prefix import (  # noqa: F401 - collected here again, against this module's server
    test_answers_with_a_prefix_hit_equal_answers_without,
    test_concurrent_requests_sharing_a_document,
    test_eviction_under_pressure_keeps_the_tree_consistent,
    test_forked_questions_reuse_the_document,
)

pytestmark = pytest.mark.gpu

PORT = 30094
SERVER = ("offload-shared", PORT, ["--a2ats-offload", "--a2ats-offload-cache", "shared", "--a2ats-host-kv-gb", "1",
                                   "--enable-deterministic-inference", "--mem-fraction-static", "0.2",
                                   "--cuda-graph-max-bs", "16"])


def test_server_info_names_the_shared_cache(server) -> None:
    state = requests.get(f"{server.url}/server_info", timeout=30).json()["internal_states"][0]["a2ats"]
    assert state["offload"]["cache"] == "shared" and state["offload"]["cache_slots"] > 0
    assert state["offload"]["hot_buffers"] == 0


def answers(url: str, prompts: list[list[int]], new_tokens: int = 96) -> list[list[int]]:
    """Greedy answers, eight requests at a time (deterministic inference: batching changes nothing)."""
    def one(prompt: list[int]) -> list[int]:
        body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True}}
        r = requests.post(f"{url}/generate", json=body, timeout=600)
        assert r.status_code == 200, r.text
        return r.json()["output_ids"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, prompts))


def test_answers_equal_those_of_buffers_mode(server, tmp_path: Path) -> None:
    """The shared cache hands attention the K/V the hot buffers would: a buffers-mode server with
    the same flags answers the same. Six requests over one document run together (their picks
    share cells), and two others do not; 96 tokens each, so picks move in and out of the cache."""
    flags = list(SERVER[2])
    i = flags.index("--a2ats-offload-cache")
    del flags[i : i + 2]
    doc = ids(DOC, 40)
    prompts = [doc + ids(40, 41 + s) for s in range(6)] + [ids(5000, 50), ids(700, 51)]
    flush(server)
    got = answers(server.url, prompts)
    assert got == reference_answers(prompts, flags, PORT + 10, "server-offload-buffers-reference.log", tmp_path)


def reference_answers(prompts: list[list[int]], flags: list[str], port: int, log_name: str, tmp_path: Path) -> list[list[int]]:
    """The answers of a second a2ats server with these flags, started for them and stopped."""
    from a2ats_sglang.default_model import smollm2_path
    from benchmarks.server import Server

    reference = Server("a2ats", str(smollm2_path()), port, flags, Path(os.environ.get("OUT", tmp_path)) / log_name)
    try:
        reference.wait_healthy(600)
        return answers(reference.url, prompts)
    finally:
        reference.stop()
