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
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the H100 node)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
