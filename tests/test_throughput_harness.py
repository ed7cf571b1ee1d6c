"""The throughput harness's server handling, with a fake server process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from benchmarks import server as servers
from benchmarks import throughput


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "SERVERS", {"stock": "fake_server", "a2ats": "no_such_module_a2ats"})
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))


def args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--server", "stock", "--label", "t", "--model-path", "m", "--port", str(free_port()),
            "--out", str(tmp_path / "t.json"), "--startup-timeout", "60", *extra]


def test_runs_at_the_largest_concurrency_the_pool_holds(fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    seen = []

    def fake_bench(server, a, input_len, concurrency, log):  # noqa: ANN001, ANN202
        seen.append((input_len, concurrency))
        assert server.proc.poll() is None  # the server is up while benchmarked
        return {"input_len": input_len, "concurrency": concurrency, "output_throughput": 10.0}

    monkeypatch.setattr(throughput, "bench", fake_bench)
    rc = throughput.main(args(tmp_path, "--input-lens", "20000", "40000", "200000", "--output-len", "256"))
    report = json.loads((tmp_path / "t.json").read_text())
    # capacity 100,000 tokens: 4 of 20,256 (capped by 2 running requests), 2 of 40,256, none of 200,256
    assert seen == [(20000, 2), (40000, 2)]
    assert report["kv_capacity_tokens"] == 100_000 and report["runs"][2]["error"].startswith("one request needs 200256")
    assert rc == 1  # a length that does not fit is reported as a failure
    assert report["meta"]["workload"]["server"] == "stock" and "startup_seconds" in report


def test_server_that_crashes_at_start(fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("FAKE_SERVER_MODE", "crash")
    assert throughput.main(args(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "server exited with code 3 while starting" in err and "boom: CUDA out of memory" in err


def test_server_that_never_gets_healthy(fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setenv("FAKE_SERVER_MODE", "sick")
    assert throughput.main(args(tmp_path, "--startup-timeout", "3")) == 1
    assert "server not healthy after 3 s" in capsys.readouterr().err


def test_a_port_already_serving_is_refused(fake, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # a server left over on the port would pass the new one's health checks and be measured instead
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        a = args(tmp_path)
        a[a.index("--port") + 1] = str(port)
        assert throughput.main(a) == 1
    assert f"port {port} is already in use" in capsys.readouterr().err


def test_a_harness_stopped_by_sigterm_stops_its_server(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    script = f"""
import time
from pathlib import Path
from benchmarks import server as servers
servers.SERVERS["stock"] = "fake_server"
s = servers.Server("stock", "m", {port}, [], Path({str(tmp_path / "s.log")!r}))
try:
    s.wait_healthy(60)
    print(s.proc.pid, flush=True)
    time.sleep(120)
finally:
    s.stop()
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]))
    harness = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    server_pid = int(harness.stdout.readline())
    os.kill(harness.pid, signal.SIGTERM)  # what `timeout` sends
    assert harness.wait(30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)
    assert not servers.port_in_use(port)


def test_missing_server_module(fake, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert throughput.main([*args(tmp_path)[:1], "a2ats", *args(tmp_path)[2:]]) == 1
    assert "no_such_module_a2ats is not available" in capsys.readouterr().err


def test_offload_counters_become_hit_rate_and_bytes_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    pages = iter([
        "# HELP a2ats:hot_hits_total x\na2ats:hot_hits_total 100.0\na2ats:hot_misses_total 50.0\n"
        "a2ats:fetched_bytes_total 1024.0\na2ats:decode_steps_total 10.0\nsglang:token_usage 0.5\n",
        'a2ats:hot_hits_total{pid="1"} 400.0\na2ats:hot_misses_total 150.0\n'
        "a2ats:fetched_bytes_total 1049600.0\na2ats:decode_steps_total 20.0\n",
        "sglang:token_usage 0.1\n",  # a stock server: no a2ats counters
    ])
    monkeypatch.setattr(throughput.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(next(pages).encode()))
    before, after = throughput.offload_counters("u"), throughput.offload_counters("u")
    assert before["a2ats:hot_hits_total"] == 100.0 and "sglang:token_usage" not in before
    got = throughput.offload_summary(before, after)
    assert got == {"hot_hit_rate": 0.75, "fetched_mib_per_decode_step": 0.1, "decode_steps": 10, "fetched_gib": 0.0}
    assert throughput.offload_summary({}, throughput.offload_counters("u")) == {}


def test_steady_decode_rate_is_the_median_at_the_full_batch() -> None:
    log = "\n".join([  # SGLang 0.5.17's lines (from an H100 run), one per 40 decode steps
        "[2026-11-27 04:07:30] Decode batch, #running-req: 1, #token: 0, token usage: 0.00, cuda graph: True, "
        "gen throughput (token/s): 0.27, #queue-req: 0",
        "[2026-11-27 04:07:48] Decode batch, #running-req: 12, #token: 393696, token usage: 0.95, cuda graph: True, "
        "gen throughput (token/s): 25.58, #queue-req: 0",  # includes the prefill before it
        "[2026-11-27 04:07:49] Prefill batch, #new-seq: 1, #new-token: 8192, #cached-token: 0, token usage: 0.04",
        "[2026-11-27 04:07:49] Decode batch, #running-req: 12, #token: 394176, token usage: 0.95, cuda graph: True, "
        "gen throughput (token/s): 514.20, #queue-req: 0",
        "[2026-11-27 04:07:50] Decode batch, #running-req: 12, #token: 394656, token usage: 0.95, cuda graph: True, "
        "gen throughput (token/s): 513.68, #queue-req: 0",
        "[2026-11-27 04:07:53] Decode batch, #running-req: 11, #token: 396096, token usage: 0.96, cuda graph: True, "
        "gen throughput (token/s): 480.00, #queue-req: 0",
    ])
    assert throughput.steady_decode_rate(log, 12) == 513.7
    assert throughput.steady_decode_rate(log, 11) == 480.0
    assert throughput.steady_decode_rate(log, 6) is None


def test_prefill_tokens_split_computed_and_cached() -> None:
    log = "\n".join([
        "[2026-11-27 04:07:29] Prefill batch, #new-seq: 1, #new-token: 8192, #cached-token: 0, token usage: 0.06, "
        "#running-req: 0, #queue-req: 0, #pending-token: 16384, cuda graph: False, input throughput (token/s): 27051.33",
        "[2026-11-27 04:07:31] Prefill batch, #new-seq: 4, #new-token: 512, #cached-token: 131072, token usage: 0.08, "
        "#running-req: 1, #queue-req: 0, #pending-token: 0, cuda graph: False, input throughput (token/s): 1000.0",
        "[2026-11-27 04:07:31] Decode batch, #running-req: 5, #token: 0, token usage: 0.00, cuda graph: True, "
        "gen throughput (token/s): 1.0, #queue-req: 0",
    ])
    assert throughput.prefill_tokens(log) == {"prefill_computed_tokens": 8704, "prefill_cached_tokens": 131072}


def test_shared_prefix_runs_one_document_for_all_questions() -> None:
    args = throughput.build_parser().parse_args(
        ["--server", "a2ats", "--label", "x", "--model-path", "m", "--shared-prefix", "32", "--question-len", "64"])
    got = throughput.dataset_args(args, 32768, 32)
    assert got[got.index("--dataset-name") + 1] == "generated-shared-prefix"
    assert got[got.index("--gsp-num-groups") + 1] == "1" and got[got.index("--gsp-prompts-per-group") + 1] == "32"
    assert got[got.index("--gsp-system-prompt-len") + 1] == "32768" and got[got.index("--gsp-question-len") + 1] == "64"
    plain = throughput.dataset_args(throughput.build_parser().parse_args(["--server", "stock", "--label", "y", "--model-path", "m"]), 100, 4)
    assert plain[plain.index("--dataset-name") + 1] == "random-ids"
