"""The bad-input battery against the fake server: a clear 4xx with a message passes, a request
the server accepts or answers with a 5xx is reported, and so is a server that dies on one."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from benchmarks import bad_inputs


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
