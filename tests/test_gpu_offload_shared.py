"""Offload mode with the shared cache (``--a2ats-offload-cache shared``), end to end on a GPU:
the prefix-reuse tests of ``test_gpu_offload_prefix.py`` (a prefix hit answers as a cold
request, concurrent requests over one document, eviction under pressure, the README's forked
frontend program) against a server whose requests share one GPU cache of host K/V, and its
``/server_info`` says so."""

from __future__ import annotations

import pytest
import requests
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
