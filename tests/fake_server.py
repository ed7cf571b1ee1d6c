"""A stand-in for ``python -m sglang.launch_server`` in the benchmark harness tests.

Mode (``--fake-mode`` or FAKE_SERVER_MODE): ``ok`` (healthy, reports a KV capacity and serves
``/generate``), ``crash`` (exits with code 3), ``sick`` (answers /health with 503 forever),
``fail_generate`` (healthy, but every ``/generate`` answers HTTP 500), ``accept_all`` (answers
every request 200, bad ones too), ``die_on_bad`` (exits at the first bad request), ``leak``
(its ``sglang:token_usage`` gauge stays above zero once it has served a few requests),
``wrong_answers`` (each reply's tokens differ from the last one's).

In ``ok`` mode bad requests get SGLang's kind of answer, a 400 with a message (malformed JSON,
an empty prompt, ids outside the vocabulary of ``--model-path``'s config, a prompt or
``max_new_tokens`` past its context, invalid sampling parameters), for the bad-input battery's
tests (``benchmarks/bad_inputs.py``); ``/v1/chat/completions`` answers likewise.

``/generate`` takes ``input_ids`` and streams ``max_new_tokens`` ids (all 7) as SGLang does
(``data: {...}`` events with the ids so far, then ``data: [DONE]``); its ``meta_info`` counts as
cached the longest prefix shared with an earlier prompt, like a radix cache that never evicts.
Each request prints a line shaped like SGLang's "Decode batch" log line, with the number of
requests in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODE = os.environ.get("FAKE_SERVER_MODE", "ok")
MODEL_PATH = ""
CAPACITY = int(os.environ.get("FAKE_SERVER_CAPACITY", "100000"))
MAX_RUNNING = int(os.environ.get("FAKE_SERVER_MAX_RUNNING", "2"))
SEEN: list[list[int]] = []
LOCK = threading.Lock()
IN_FLIGHT = [0]
SERVED = [0]


def cached_prefix(ids: list[int]) -> int:
    best = 0
    for old in SEEN:
        n = 0
        for a, b in zip(old, ids):
            if a != b:
                break
            n += 1
        best = max(best, n)
    return best


def invalid(path: str, raw: bytes) -> str | None:
    """What SGLang would refuse in this request, roughly, or None."""
    try:
        body = json.loads(raw)
    except ValueError as e:
        return f"JSON decode error: {e}"
    if not isinstance(body, dict):
        return "the request must be a JSON object"
    config_file = Path(MODEL_PATH) / "config.json"
    config = json.loads(config_file.read_text()) if MODEL_PATH and config_file.is_file() else {}
    vocab, context = config.get("vocab_size", 2**31), config.get("max_position_embeddings", 2**31)
    if path == "/v1/chat/completions":
        params, prompt = body, [0] * 8 * len(body.get("messages", []))
        n = body.get("max_tokens", 16)
    else:
        params = body.get("sampling_params", {})
        prompt = body["input_ids"] if "input_ids" in body else str(body.get("text", "")).split()
        n = params.get("max_new_tokens", 16)
    if not prompt:
        return "the input is empty"
    if any(isinstance(t, int) and not 0 <= t < vocab for t in prompt):
        return f"The input_ids contains values outside the vocabulary ({vocab})"
    if len(prompt) > context:
        return f"The input ({len(prompt)} tokens) is longer than the model's context length ({context} tokens)."
    if n < 0:
        return f"max_new_tokens must be at least 0, got {n}."
    if n + len(prompt) > context:
        return "Requested token count exceeds the model's maximum context length"
    if params.get("temperature", 1.0) < 0:
        return "temperature must be a non-negative finite number"
    if not 0 < params.get("top_p", 1.0) <= 1:
        return "top_p must be in (0, 1]"
    if params.get("top_k", -1) != -1 and params.get("top_k", -1) < 1:
        return "top_k must be -1 (disable) or at least 1"
    if not -2 <= params.get("frequency_penalty", 0.0) <= 2:
        return "frequency_penalty must be in [-2, 2]"
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass

    def _reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._reply(*((200, "") if MODE != "sick" else (503, "starting")))
        elif self.path == "/metrics":
            usage = 0.05 if MODE == "leak" and SERVED[0] > 20 else 0.0  # a pool that never empties again
            self._reply(200, f"sglang:num_running_reqs {IN_FLIGHT[0]}.0\nsglang:num_queue_reqs 0.0\n"
                             f"sglang:token_usage {usage}\n")
        elif self.path == "/model_info":
            self._reply(200, json.dumps({"model_path": MODEL_PATH}))
        elif self.path == "/server_info":
            self._reply(200, json.dumps({"model_path": "fake", "max_total_num_tokens": CAPACITY, "max_running_requests": MAX_RUNNING}))
        else:
            self._reply(404, "")

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if MODE == "fail_generate" or self.path not in ("/generate", "/v1/chat/completions", "/flush_cache"):
            self._reply(500, "Internal Server Error: fake failure")
            return
        error = None if MODE == "accept_all" or self.path == "/flush_cache" else invalid(self.path, raw)
        if error is not None:
            if MODE == "die_on_bad":
                os._exit(9)
            self._reply(400, json.dumps({"error": {"message": error}}))
            return
        if self.path == "/flush_cache":
            self._reply(200, "Cache flushed.")
            return
        SERVED[0] += 1
        if MODE == "accept_all":  # whatever came, unread
            self._chat({})
            return
        body = json.loads(raw)
        if self.path == "/v1/chat/completions":
            self._chat(body)
            return
        if "input_ids" not in body:
            self._reply(200, json.dumps({"text": "fake"}))
            return
        ids, params = body["input_ids"], body["sampling_params"]
        n, choices = params["max_new_tokens"], params.get("n", 1)
        token = 7 + (SERVED[0] if MODE == "wrong_answers" else 0)
        with LOCK:
            cached = cached_prefix(ids)
            SEEN.append(list(ids))
            IN_FLIGHT[0] += 1
            print(f"Decode batch, #running-req: {IN_FLIGHT[0]}, #token: 1, gen throughput (token/s): {100.0 * IN_FLIGHT[0]:.2f}", flush=True)
        try:
            if not body.get("stream"):
                meta = {"prompt_tokens": len(ids), "completion_tokens": n, "cached_tokens": cached}
                replies = [{"output_ids": [token] * n, "meta_info": meta, "index": i} for i in range(choices)]
                self._reply(200, json.dumps(replies if choices > 1 else replies[0]))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            out: list[int] = []
            for _ in range(n):
                time.sleep(0.002)
                out.append(token)
                meta = {"prompt_tokens": len(ids), "completion_tokens": len(out), "cached_tokens": cached}
                for i in range(choices):
                    self.wfile.write(f"data: {json.dumps({'output_ids': out, 'meta_info': meta, 'index': i})}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (an abort)
        finally:
            with LOCK:
                IN_FLIGHT[0] -= 1

    def _chat(self, body: dict) -> None:
        reply = {"choices": [{"message": {"role": "assistant", "content": "fake"}, "finish_reason": "length"}], "text": "fake"}
        if not body.get("stream"):
            self._reply(200, json.dumps(reply))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for _ in range(min(int(body.get("max_tokens", 4)), 16)):
                self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': 'x'}}]})}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


def main() -> None:
    global MODE, MODEL_PATH
    p = argparse.ArgumentParser()
    p.add_argument("--model-path")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--fake-mode", default=None)
    args, _ = p.parse_known_args()
    MODE = args.fake_mode or MODE
    MODEL_PATH = args.model_path
    if MODE == "crash":
        print("boom: CUDA out of memory", flush=True)
        sys.exit(3)
    ThreadingHTTPServer.request_queue_size = 1024  # bursts of hundreds of connections (the soak's)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
