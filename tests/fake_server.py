"""A stand-in for ``python -m sglang.launch_server`` in the benchmark harness tests.

Mode (``--fake-mode`` or FAKE_SERVER_MODE): ``ok`` (healthy, reports a KV capacity and serves
``/generate``), ``crash`` (exits with code 3), ``sick`` (answers /health with 503 forever),
``fail_generate`` (healthy, but every ``/generate`` answers HTTP 500).

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

MODE = os.environ.get("FAKE_SERVER_MODE", "ok")
CAPACITY = int(os.environ.get("FAKE_SERVER_CAPACITY", "100000"))
MAX_RUNNING = int(os.environ.get("FAKE_SERVER_MAX_RUNNING", "2"))
SEEN: list[list[int]] = []
LOCK = threading.Lock()
IN_FLIGHT = [0]


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
        elif self.path == "/server_info":
            self._reply(200, json.dumps({"model_path": "fake", "max_total_num_tokens": CAPACITY, "max_running_requests": MAX_RUNNING}))
        else:
            self._reply(404, "")

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/generate" or MODE == "fail_generate":
            self._reply(500, "Internal Server Error: fake failure")
            return
        ids, n = body["input_ids"], body["sampling_params"]["max_new_tokens"]
        with LOCK:
            cached = cached_prefix(ids)
            SEEN.append(list(ids))
            IN_FLIGHT[0] += 1
            print(f"Decode batch, #running-req: {IN_FLIGHT[0]}, #token: 1, gen throughput (token/s): {100.0 * IN_FLIGHT[0]:.2f}", flush=True)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            out: list[int] = []
            for _ in range(n):
                time.sleep(0.002)
                out.append(7)
                meta = {"prompt_tokens": len(ids), "completion_tokens": len(out), "cached_tokens": cached}
                self.wfile.write(f"data: {json.dumps({'output_ids': out, 'meta_info': meta})}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
        finally:
            with LOCK:
                IN_FLIGHT[0] -= 1


def main() -> None:
    global MODE
    p = argparse.ArgumentParser()
    p.add_argument("--model-path")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--fake-mode", default=None)
    args, _ = p.parse_known_args()
    MODE = args.fake_mode or MODE
    if MODE == "crash":
        print("boom: CUDA out of memory", flush=True)
        sys.exit(3)
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
