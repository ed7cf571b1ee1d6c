"""The accuracy runner against fake servers: correct scoring, clear errors, partial results, no hang."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from a2ats_sglang.default_model import smollm2_path
from benchmarks import accuracy
from benchmarks.client import Endpoint, EndpointError

Reply = Callable[[str, dict], tuple[int, str]]  # (path, body) -> (status, text)


def oracle_reply(path: str, body: dict) -> tuple[int, str]:
    """A 'model' that answers niah and passkey prompts perfectly."""
    prompt = body.get("text") or body.get("prompt") or ""
    key = re.search(r"special magic number for (\S+) mentioned", prompt)
    if key:
        answer = re.search(rf"special magic numbers for {re.escape(key.group(1))} is: (\d+)", prompt).group(1)
    else:
        answer = re.search(r"The pass key is (\d+)", prompt).group(1)
    if path == "/v1/completions":
        return 200, json.dumps({"choices": [{"text": f" {answer}."}]})
    return 200, json.dumps({"text": f" {answer}."})


class FakeServer:
    def __init__(self, reply: Reply, info: dict) -> None:
        self.reply, self.info, self.calls = reply, info, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, text: str) -> None:
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/server_info":
                    self._send(200, json.dumps(outer.info))
                elif self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": "fake"}]}))
                else:
                    self._send(404, "not found")

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls += 1
                status, text = outer.reply(self.path, body)
                if body.get("stream") and status == 200 and text.startswith("{"):  # SGLang streams JSON events
                    text = f"data: {text}\n\ndata: [DONE]\n\n"
                self._send(status, text)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Reply], FakeServer]]:
    servers: list[FakeServer] = []
    info = {"model_path": str(smollm2_path()), "context_length": 8192}

    def start(reply: Reply) -> FakeServer:
        servers.append(FakeServer(reply, info))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def args_for(url: str, out: Path, *extra: str) -> list[str]:
    return ["--base-url", url, "--label", "t", "--tasks", "niah_single_noise", "passkey", "--lengths", "1024", "2048",
            "--samples", "3", "--out", str(out), "--timeout", "5", "--warmup", "0", *extra]


@pytest.mark.parametrize("kind", ["generate", "openai"])
def test_perfect_model_scores_one(serve, tmp_path: Path, kind: str) -> None:  # noqa: ANN001
    server = serve(oracle_reply)
    out = tmp_path / "acc.json"
    extra = ["--endpoint", kind] + (["--tokenizer", str(smollm2_path())] if kind == "openai" else [])
    assert accuracy.main(args_for(server.url, out, *extra)) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and report["error"] is None and server.calls == 12
    for task in ("niah_single_noise", "passkey"):
        for length in ("1024", "2048"):
            assert report["results"][task][length]["score"] == 1.0 and report["results"][task][length]["n"] == 3
    assert report["meta"]["workload"]["endpoint"] == kind and report["meta"]["commit"]
    rows = [r for cells in report["samples"].values() for cell in cells.values() for r in cell]
    if kind == "generate":  # streamed: the first chunk's time, within the request's
        assert all(0 < r["ttft"] <= r["seconds"] + 1e-3 for r in rows)
        assert report["results"]["passkey"]["1024"]["ttft_mean"] > 0
    else:
        assert all(r["ttft"] is None for r in rows) and report["results"]["passkey"]["1024"]["ttft_mean"] is None


def test_warmup_requests_come_first_and_are_not_measured(serve, tmp_path: Path) -> None:  # noqa: ANN001
    prompts: list[str] = []

    def recording(path: str, body: dict) -> tuple[int, str]:
        prompts.append(body["text"])
        status, text = oracle_reply(path, body)
        return status, json.dumps({**json.loads(text), "meta_info": {"cached_tokens": 7}})

    server = serve(recording)
    out = tmp_path / "acc.json"
    assert accuracy.main(args_for(server.url, out, "--warmup", "2", "--concurrency", "1")) == 0
    report = json.loads(out.read_text())
    assert server.calls == 14 and report["meta"]["workload"]["warmup_requests"] == 2
    measured = [r for cells in report["samples"].values() for cell in cells.values() for r in cell]
    assert len(measured) == 12
    assert len(set(prompts[:2])) == 2 and not set(prompts[:2]) & set(prompts[2:])  # another seed's prompts
    assert "special magic number" in prompts[0]  # the first task, niah_single_noise
    assert report["results"]["passkey"]["2048"]["cached_tokens"] == 21  # the server's meta_info, summed


def test_negative_warmup_is_refused(serve, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    server = serve(oracle_reply)
    args = args_for(server.url, tmp_path / "a.json")
    args[args.index("--warmup") + 1] = "-1"
    assert accuracy.main(args) == 1 and server.calls == 0
    assert "--warmup must be 0 or more" in capsys.readouterr().err


def test_server_error_mid_run_keeps_partial_results(serve, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    def dies_after_six(path: str, body: dict) -> tuple[int, str]:
        return oracle_reply(path, body) if server.calls <= 6 else (500, "Internal Server Error: scheduler died\nmore")

    server = serve(dies_after_six)
    out = tmp_path / "acc.json"
    assert accuracy.main(args_for(server.url, out, "--concurrency", "1")) == 1
    report = json.loads(out.read_text())
    assert not report["complete"]
    assert "HTTP 500: Internal Server Error: scheduler died" in report["error"]
    assert report["results"]["niah_single_noise"]["1024"]["score"] == 1.0  # finished cells stay
    assert "passkey" not in report["results"]
    assert "partial results kept" in capsys.readouterr().err


def test_non_json_reply_is_a_clear_error(serve, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    server = serve(lambda path, body: (200, "<html>proxy error</html>"))
    assert accuracy.main(args_for(server.url, tmp_path / "a.json")) == 1
    assert "sent a non-JSON reply: '<html>proxy error</html>'" in capsys.readouterr().err


def test_hung_server_times_out(serve, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    def hang(path: str, body: dict) -> tuple[int, str]:
        time.sleep(4)
        return oracle_reply(path, body)

    server = serve(hang)
    started = time.time()
    assert accuracy.main(args_for(server.url, tmp_path / "a.json", "--timeout", "1", "--concurrency", "2")) == 1
    assert time.time() - started < 15
    assert "gave no reply within 1 s" in capsys.readouterr().err


def test_unreachable_endpoint(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens there
    assert accuracy.main(args_for(f"http://127.0.0.1:{port}", tmp_path / "a.json")) == 1
    err = capsys.readouterr().err
    assert f"cannot reach http://127.0.0.1:{port}/server_info: connection refused" in err
    assert not (tmp_path / "a.json").exists()


def test_lengths_beyond_the_context_are_refused(serve, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    server = serve(oracle_reply)
    assert accuracy.main(args_for(server.url, tmp_path / "a.json", "--lengths", "8192")) == 1
    assert "does not fit the server's context of 8192 tokens" in capsys.readouterr().err


def test_reply_without_text_field() -> None:
    with pytest.raises(ValueError, match="kind must be"):
        Endpoint("http://x", "grpc")  # type: ignore[arg-type]
    server = FakeServer(lambda p, b: (200, json.dumps({"txt": "x"})), {})
    try:
        with pytest.raises(EndpointError, match="/generate reply has no 'text'"):
            Endpoint(server.url).complete("hi", 4)
    finally:
        server.close()


def test_launched_server_that_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    from benchmarks import server as servers

    monkeypatch.setattr(servers, "SERVERS", {"stock": "fake_server"})
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    monkeypatch.setenv("FAKE_SERVER_MODE", "crash")
    argv = ["--launch", "stock", "--model-path", "m", "--label", "t", "--out", str(tmp_path / "a.json"), "--port", "0"]
    assert accuracy.main(argv) == 1
    assert "server exited with code 3 while starting" in capsys.readouterr().err


def test_stream_error_and_first_chunk_time() -> None:
    def chunks(path: str, body: dict) -> tuple[int, str]:  # already an event stream (sent as is)
        return 200, 'data: {"text": " 1"}\n\ndata: {"error": {"message": "scheduler aborted the request"}}\n\n'

    server = FakeServer(chunks, {})
    try:
        with pytest.raises(EndpointError, match="failed mid-stream: .*scheduler aborted the request"):
            Endpoint(server.url).complete("hi", 4)
    finally:
        server.close()
