"""Skip ``gpu`` tests where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the H100 node)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
