"""The bad-input battery against the fake server: a clear 4xx with a message passes, a request
the server accepts or answers with a 5xx is reported, and so is a server that dies on one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from benchmarks import bad_inputs

FAKE = Path(__file__).parent / "fake_server.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 49152, "max_position_embeddings": 8192}))
    procs = []

    def launch(mode: str) -> str:
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(FAKE), "--model-path", str(model), "--host", "127.0.0.1",
                                 "--port", str(port), "--fake-mode", mode])
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if bad_inputs.alive(url, timeout=1):
                return url
            time.sleep(0.1)
        raise RuntimeError("the fake server did not start")

    yield launch
    for proc in procs:
        proc.kill()
        proc.wait()


def test_every_case_is_a_clear_error_on_a_server_that_refuses_them(start) -> None:
    url = start("ok")
    assert bad_inputs.server_shape(url)[:2] == (49152, 8192)  # from the model's config
    outcomes = bad_inputs.run_all(url)
    assert len(outcomes) == len(bad_inputs.cases(49152, 8192, "m")) >= 20
    assert bad_inputs.failures(outcomes) == [], [o for o in outcomes if o.verdict != "clear_error"]
    by_name = {o.name: o for o in outcomes}
    assert "vocabulary" in by_name["token id past the vocabulary"].message
    assert "context length" in by_name["prompt longer than the context"].message
    assert "JSON" in by_name["malformed JSON"].message
    assert all(o.status == 400 and o.alive for o in outcomes)
    assert bad_inputs.main(["--base-url", url]) == 0


def test_a_server_that_accepts_them_is_reported(start, tmp_path: Path) -> None:
    url = start("accept_all")
    out = tmp_path / "outcomes.json"
    assert bad_inputs.main(["--base-url", url, "--out", str(out)]) == 1
    outcomes = json.loads(out.read_text())
    assert {o["verdict"] for o in outcomes} == {"accepted"} and all(o["status"] == 200 for o in outcomes)


def test_a_server_that_dies_is_reported(start) -> None:
    url = start("die_on_bad")
    first = bad_inputs.run_case(url, bad_inputs.cases(49152, 8192, "m")[0])
    assert first.verdict == "no_answer" and not first.alive


def test_a_5xx_is_not_a_clear_error(start) -> None:
    url = start("fail_generate")
    outcome = bad_inputs.run_case(url, bad_inputs.cases(49152, 8192, "m")[0])
    assert outcome.verdict == "server_error" and outcome.status == 500 and outcome.alive
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
