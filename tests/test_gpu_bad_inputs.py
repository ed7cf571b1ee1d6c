"""Every bad input against a real a2ats server (SmolLM2, GPU-resident) gets a clear 4xx with a
message and leaves the server serving (``benchmarks/bad_inputs.py``)."""

from __future__ import annotations

import pytest
import requests

from benchmarks import bad_inputs

pytestmark = pytest.mark.gpu

PORT = 30093
SERVER = ("bad-inputs", PORT, ["--mem-fraction-static", "0.3", "--cuda-graph-max-bs", "4"])


def test_each_bad_input_gets_a_clear_error_and_the_server_lives_on(server) -> None:
    outcomes = bad_inputs.run_all(server.url)
    for o in outcomes:
        print(f"{o.verdict:12} {o.status} {o.name}: {o.message[:100]}")
    assert bad_inputs.failures(outcomes) == []
    ok = requests.post(f"{server.url}/generate", json={"text": "The capital of France is",
                                                       "sampling_params": {"max_new_tokens": 4, "temperature": 0}},
                       timeout=120)
    assert ok.status_code == 200 and ok.json()["text"]


def test_server_info_reports_the_gpu_resident_backend(server) -> None:
    info = requests.get(f"{server.url}/server_info", timeout=30).json()
    state = info["internal_states"][0]["a2ats"]
    assert state["mode"] == "gpu" and "offload" not in state
    assert state["kv_capacity_tokens"] == {"gpu": info["max_total_num_tokens"], "host": 0}
    assert state["codebook"]["codewords"] > 0 and state["budget"]["static_width"] > 0
