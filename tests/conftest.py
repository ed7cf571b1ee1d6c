"""Skip ``gpu`` tests where there is no CUDA device; run Triton kernels in its interpreter there."""

from __future__ import annotations

import os

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
