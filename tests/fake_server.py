"""A stand-in for ``python -m sglang.launch_server`` in the throughput harness tests.

FAKE_SERVER_MODE: ``ok`` (healthy, reports a KV capacity), ``crash`` (exits with code 3),
``sick`` (answers /health with 503 forever).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

MODE = os.environ.get("FAKE_SERVER_MODE", "ok")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            status, body = (200, "") if MODE == "ok" else (503, "starting")
        elif self.path == "/server_info":
            status, body = 200, json.dumps({"model_path": "fake", "max_total_num_tokens": 100_000, "max_running_requests": 2})
        else:
            status, body = 404, ""
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    args, _ = p.parse_known_args()
    if MODE == "crash":
        print("boom: CUDA out of memory", flush=True)
        sys.exit(3)
    HTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
