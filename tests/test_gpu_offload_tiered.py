"""Both tiers as one capacity (``--a2ats-gpu-homes``), end to end on a GPU: the prefix-reuse
tests of ``test_gpu_offload_prefix.py`` against a server whose HBM homes only 3,000 tokens, so
most of every long prompt lives in host rows and is read through the shared cache; its
``/server_info`` gives both tiers; and under deterministic inference its greedy answers equal a
GPU-resident server's, token for token, whichever tier each token sits in."""

from __future__ import annotations

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
from test_gpu_offload_shared import answers, reference_answers

pytestmark = pytest.mark.gpu

PORT = 30095
HOMES = 3000
SERVER = ("offload-tiered", PORT, ["--a2ats-offload", "--a2ats-offload-cache", "shared", "--a2ats-gpu-homes", str(HOMES),
                                   "--a2ats-host-kv-gb", "1", "--enable-deterministic-inference",
                                   "--mem-fraction-static", "0.2", "--cuda-graph-max-bs", "16"])


def test_server_info_gives_both_tiers(server) -> None:
    info = requests.get(f"{server.url}/server_info", timeout=30).json()
    state = info["internal_states"][0]["a2ats"]
    capacity = state["kv_capacity_tokens"]
    assert capacity["gpu"] == HOMES and capacity["host"] > 0
    assert capacity["gpu"] + capacity["host"] == info["max_total_num_tokens"]
    assert state["offload"]["cache"] == "shared"


def test_answers_equal_those_of_the_gpu_resident_backend(server, tmp_path: Path) -> None:
    """Prompts of 1,500 to 5,000 tokens, six over one document, run while homes run out: the
    first tokens take GPU homes, the rest host rows, and every answer equals a GPU-resident
    server's at the same budget."""
    doc = ids(DOC, 40)
    prompts = [doc + ids(40, 41 + s) for s in range(6)] + [ids(5000, 50), ids(1500, 51)]
    flush(server)
    got = answers(server.url, prompts)
    resident = ["--enable-deterministic-inference", "--mem-fraction-static", "0.2", "--cuda-graph-max-bs", "16"]
    assert got == reference_answers(prompts, resident, PORT + 10, "server-tiered-resident-reference.log", tmp_path)
