"""Skip ``gpu`` tests where there is no CUDA device; run Triton kernels in its interpreter there."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

# triton reads TRITON_INTERPRET when a @triton.jit function is defined, so this must run before
# any test module imports a2ats_sglang.kernels (conftest is imported first)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU node)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """An a2ats server on SmolLM2, started once for a GPU test module that sets
    ``SERVER = (name, port, flags)``; its log goes to ``$OUT/server-<name>.log``."""
    from pathlib import Path

    from a2ats_sglang.default_model import smollm2_path
    from benchmarks.server import Server

    name, port, flags = request.module.SERVER
    log = Path(os.environ.get("OUT", tmp_path_factory.mktemp("logs"))) / f"server-{name}.log"
    server = Server("a2ats", str(smollm2_path()), port, flags, log)
    try:
        server.wait_healthy(600)
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start(tmp_path: Path):
    """``start(mode)`` starts the fake server (``tests/fake_server.py``) in that mode, on a model
    whose config has SmolLM2's vocabulary and an 8K context. → its URL"""
    import json
    import subprocess
    import sys
    import time

    from benchmarks import bad_inputs

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": 49152, "max_position_embeddings": 8192}))
    procs = []

    def launch(mode: str) -> str:
        port = free_port()
        fake = Path(__file__).parent / "fake_server.py"
        proc = subprocess.Popen([sys.executable, str(fake), "--model-path", str(model), "--host", "127.0.0.1",
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
