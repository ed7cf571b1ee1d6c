"""The soak harness against the fake server: its counts add up, and each way a server can fail
the soak (leaking, answering differently, dying) makes it fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import soak


def soak_argv(url: str, out: Path, *extra: str) -> list[str]:
    return ["--base-url", url, "--duration", "4", "--workers", "4", "--max-input", "400", "--burst-every", "1.5",
            "--abort-rate", "0.5", "--out", str(out), *extra]


def test_a_healthy_server_passes_and_every_request_is_counted(start, tmp_path: Path) -> None:
    out = tmp_path / "reliability.json"
    code = soak.main(soak_argv(start("ok"), out))
    data = json.loads(out.read_text())
    r = data["results"]
    assert code == 0, r
    assert data["meta"]["workload"]["duration"] == 4 and "command" in data["meta"]
    assert r["requests_sent"] >= 20 and r["aborted_by_client"] >= 1 and r["completed"] >= 10
    assert r["requests_sent"] == r["completed"] + r["aborted_by_client"] + r["lost"] + sum(r["errors_by_kind"].values())
    assert r["lost"] == 0 and r["errors_by_kind"] == {} and r["mismatches"] == 0 and r["crashes"] == 0
    assert r["bad_inputs"]["cases"] >= 42 and r["bad_inputs"]["not_clear"] == []  # twice the battery, two limits
    assert r["leaks"] == {"sglang:num_running_reqs": 0, "sglang:num_queue_reqs": 0, "sglang:token_usage": 0}


def test_a_pool_that_does_not_empty_fails_the_soak(start, tmp_path: Path) -> None:
    out = tmp_path / "reliability.json"
    assert soak.main(soak_argv(start("leak"), out)) == 1
    assert json.loads(out.read_text())["results"]["leaks"]["sglang:token_usage"] == 0.05


def test_different_answers_fail_the_soak(start, tmp_path: Path) -> None:
    out = tmp_path / "reliability.json"
    assert soak.main(soak_argv(start("wrong_answers"), out)) == 1
    assert json.loads(out.read_text())["results"]["mismatches"] == 8


def test_a_server_that_dies_fails_the_soak(start, tmp_path: Path) -> None:
    out = tmp_path / "reliability.json"
    assert soak.main(soak_argv(start("die_on_bad"), out)) == 1
    r = json.loads(out.read_text())["results"]
    assert r["crashes"] == 1 and r["killed_by"] == "empty prompt (text)"  # its first bad request
    assert "requests_sent" not in r  # no load was run against a dead server


def test_a_server_without_metrics_is_refused(start, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(soak, "GAUGES", ("sglang:not_exported",))
    with pytest.raises(SystemExit, match="--enable-metrics"):
        soak.main(soak_argv(start("ok"), tmp_path / "r.json"))
