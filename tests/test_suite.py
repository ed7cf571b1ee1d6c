"""The benchmark suite against a fake server: planning, the file format, resume, and errors
recorded while the rest goes on."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from benchmarks import server as servers
from benchmarks import suite
from benchmarks.meta import gpu_short_name
from benchmarks.workloads import Workload, client_metrics, Request, Run

METRIC_KEYS = ("output_tokens_per_s", "steady_decode_tokens_per_s", "kv_capacity_tokens", "max_concurrency",
               "ttft_p50_ms", "ttft_p99_ms", "total_s")
SMALL = (
    Workload("rand", "m1", "random", 40, 8, ("stock", "a2ats")),
    Workload("chat", "m1", "multi_turn", 30, 4, ("stock", "hicache", "a2ats"), conversations=3, turns=3, question_len=5),
    Workload("doc", "m1", "shared_document", 50, 4, ("stock", "a2ats"), question_len=6, questions=4),
    Workload("huge", "m2", "random", 10**6, 8, ("stock",)),
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(servers, "SERVERS", {"stock": "fake_server", "a2ats": "fake_server"})
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.setenv("FAKE_SERVER_MAX_RUNNING", "3")
    monkeypatch.setattr(suite, "WORKLOADS", SMALL)
    monkeypatch.setattr(suite, "SIDES", {"stock": ("stock", []), "hicache": ("stock", []), "a2ats": ("a2ats", []),
                                         "a2ats-offload": ("a2ats", [])})
    return tmp_path


def argv(tmp: Path, *extra: str) -> list[str]:
    return ["--gpu", "test", "--results", str(tmp / "results"), "--models-dir", str(tmp), "--log-dir", str(tmp / "logs"),
            "--port", str(free_port()), "--startup-timeout", "60", *extra]


def read(tmp: Path, name: str) -> dict:
    return json.loads((tmp / "results" / f"suite-test-{name}.json").read_text())


def test_plan_groups_by_server_and_skips_what_is_done(tmp_path: Path) -> None:
    groups = suite.plan(SMALL, suite.ALL_SIDES, tmp_path, "g", False)
    assert [(g.model, g.side, [w.name for w in g.workloads]) for g in groups] == [
        ("m1", "stock", ["rand", "chat", "doc"]), ("m1", "hicache", ["chat"]), ("m1", "a2ats", ["rand", "chat", "doc"]),
        ("m2", "stock", ["huge"]),
    ]
    (tmp_path / "suite-g-rand.json").write_text(json.dumps({"sides": {"stock": {"total_s": 1}, "a2ats": {"error": "x"}}}))
    groups = suite.plan(SMALL, ["stock", "a2ats"], tmp_path, "g", False)
    assert [(g.side, [w.name for w in g.workloads]) for g in groups] == [
        ("stock", ["chat", "doc"]), ("a2ats", ["chat", "doc"]), ("stock", ["huge"])]
    retry = suite.plan(SMALL, ["a2ats"], tmp_path, "g", True)
    assert [w.name for w in retry[0].workloads] == ["rand", "chat", "doc"]
    rerun = suite.plan(SMALL, ["stock"], tmp_path, "g", False, rerun=True)  # recorded and fine, yet again
    assert [(g.side, [w.name for w in g.workloads]) for g in rerun] == [("stock", ["rand", "chat", "doc"]), ("stock", ["huge"])]


def test_runs_every_workload_on_every_side_and_resumes(fake: Path, capsys: pytest.CaptureFixture) -> None:
    assert suite.main(argv(fake)) == 1  # "huge" does not fit: recorded, the rest goes on
    out = capsys.readouterr().out
    assert "[suite] test: 8 (workload, side) runs pending on 4 servers" in out and "FAILED huge × stock" in out
    rand = read(fake, "rand")
    assert rand["workload"] == "rand" and set(rand["sides"]) == {"stock", "a2ats"}
    for key in ("gpu", "device", "commit", "model", "workload", "command"):
        assert key in rand["meta"], key
    for side in rand["sides"].values():
        for key in METRIC_KEYS:
            assert side[key] is not None, key
        # capacity 100,000 tokens holds 2,083 requests of 48; the server runs 3 at once
        assert side["concurrency"] == 3 and side["requests"] == 3 and side["output_tokens"] == 24
        assert side["kv_capacity_tokens"] == 100_000 and side["kv_capacity_tiers"] == {"gpu": 100_000, "host": 0}
        assert 1 <= side["max_concurrency"] <= 3 and "server_command" in side and "commit" in side
    chat = read(fake, "chat")["sides"]["hicache"]
    assert chat["requests"] == 9 and len(chat["ttft_p50_ms_by_turn"]) == 3
    # every turn after the first finds its history cached (the fake's cache never evicts)
    history = [30 + 5, 30 + 5 + 4 + 5, 30 + 5 + 4 + 5 + 4 + 5]
    assert chat["prompt_tokens_computed"] + chat["prompt_tokens_cached"] == 3 * sum(history)
    assert chat["prompt_tokens_cached"] >= 3 * (history[0] - 5 + 4 + history[1] - 5 + 4)
    doc = read(fake, "doc")["sides"]["stock"]
    assert doc["requests"] == 4 and doc["prompt_tokens_cached"] == 4 * 50  # the warm-up cached the document
    assert read(fake, "huge")["sides"]["stock"]["error"].startswith("one request needs 1000008 tokens")
    # resumed: only the failed pair is pending, and only with --retry-failed
    assert suite.main(argv(fake, "--dry-run")) == 0
    assert "0 (workload, side) runs pending" in capsys.readouterr().out
    assert suite.main(argv(fake, "--dry-run", "--retry-failed")) == 0
    assert "1 (workload, side) runs pending on 1 servers" in capsys.readouterr().out
    # --rerun: every selected pair again, recorded or not
    assert suite.main(argv(fake, "--dry-run", "--rerun")) == 0
    assert "[suite] test: 8 (workload, side) runs pending on 4 servers" in capsys.readouterr().out


def test_a_side_that_cannot_start_or_fails_is_recorded(fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sides = dict(suite.SIDES, a2ats=("a2ats", ["--fake-mode", "crash"]), hicache=("stock", ["--fake-mode", "fail_generate"]))
    monkeypatch.setattr(suite, "SIDES", sides)
    assert suite.main(argv(fake, "--workloads", "rand", "chat")) == 1
    rand, chat = read(fake, "rand")["sides"], read(fake, "chat")["sides"]
    assert "output_tokens_per_s" in rand["stock"] and "error" not in rand["stock"]
    for entry in (rand["a2ats"], chat["a2ats"]):
        assert entry["error"].startswith("the server did not start: server exited with code 3")
        assert "boom: CUDA out of memory" in entry["error"]
    assert "HTTP 500" in chat["hicache"]["error"] and "output_tokens_per_s" in chat["stock"]


def test_a_corrupt_result_file_stops_with_a_message(fake: Path) -> None:
    (fake / "results").mkdir()
    (fake / "results" / "suite-test-rand.json").write_text("{")
    with pytest.raises(SystemExit, match="suite-test-rand.json is not valid JSON"):
        suite.main(argv(fake, "--dry-run"))


def test_client_metrics_percentiles_and_tpot() -> None:
    reqs = [Request(i, 0, 100, 40, 11, ttft=0.1 * (i + 1), e2e=0.1 * (i + 1) + 1.0) for i in range(5)]
    m = client_metrics(Run(reqs, 2.0, 5))
    assert m["output_tokens_per_s"] == 27.5 and m["requests_per_s"] == 2.5
    assert m["ttft_p50_ms"] == 300.0 and m["ttft_p99_ms"] == pytest.approx(496.0)
    assert m["tpot_p50_ms"] == 100.0 and m["prompt_tokens_computed"] == 300 and m["prompt_tokens_cached"] == 200


def test_decode_metrics_from_sglang_log_lines() -> None:
    log = "\n".join(f"[t] Decode batch, #running-req: {r}, #token: 9, gen throughput (token/s): {t}" for r, t in
                    [(4, 10.0), (20, 900.0), (19, 880.0), (20, 950.0), (3, 50.0)])
    assert suite.decode_metrics(log) == {"max_concurrency": 20, "steady_decode_tokens_per_s": 900.0}
    assert suite.decode_metrics("") == {"max_concurrency": None, "steady_decode_tokens_per_s": None}


def test_gpu_short_names() -> None:
    assert gpu_short_name("NVIDIA H200") == "h200"
    assert gpu_short_name("NVIDIA H100 80GB HBM3") == "h100"


def test_offloads_gpu_rows_are_not_counted_as_capacity() -> None:
    log = "[t] A²ATS offload: pinned host KV pool 85.0 GiB, GPU KV tensors 397698 slots (0 of them homes)\n"
    info = {"max_total_num_tokens": 696319}
    assert suite.kv_tiers("a2ats-offload", info, log, 131072) == {"gpu": 0, "host": 696319, "gpu_staging_and_hot_rows": 397698}
    tiered = "[t] A²ATS offload: pinned host KV pool 85.0 GiB, GPU KV tensors 900000 slots (800000 of them homes)\n"
    both = {"max_total_num_tokens": 1496319}  # homes, then host rows
    assert suite.kv_tiers("a2ats-tiered", both, tiered, 131072) == {"gpu": 800000, "host": 696319,
                                                                    "gpu_staging_and_hot_rows": 100000}
    assert suite.kv_tiers("hicache", info, "", 131072) == {"gpu": 696319, "host": 96 * 10**9 // 131072}
    assert suite.kv_tiers("stock", info, "", 131072) == {"gpu": 696319, "host": 0}


def test_a2ats_state_is_read_from_server_info(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.client import Endpoint, EndpointError

    answers = iter([{"internal_states": [{"a2ats": {"mode": "gpu"}}]}, {"internal_states": [{}]}, {}])
    monkeypatch.setattr(Endpoint, "check", lambda self: next(answers))
    assert suite.a2ats_state("http://x") == {"mode": "gpu"}
    assert suite.a2ats_state("http://x") is None  # stock SGLang
    assert suite.a2ats_state("http://x") is None  # no internal states at all

    def down(self):  # noqa: ANN001, ANN202
        raise EndpointError("connection refused")

    monkeypatch.setattr(Endpoint, "check", down)
    assert suite.a2ats_state("http://x") is None
