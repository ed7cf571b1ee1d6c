"""The ``meta`` object every result file carries: GPU, commit, model, workload, command."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit() -> str:
    """``A2ATS_COMMIT`` when set (the GPU node receives a copy of the tree, and whatever ``.git``
    it finds there may be stale), else HEAD of the checkout (``+dirty`` when it has changes)."""
    if os.environ.get("A2ATS_COMMIT"):
        return os.environ["A2ATS_COMMIT"]
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def gpu_short_name(device_name: str) -> str:
    """``NVIDIA H200`` → ``h200`` (names the result files)."""
    m = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", device_name)
    return (m[1] if m else re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "gpu").lower()


def run_meta(device: str, model: str, workload: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "device": device_name(device),
        "commit": git_commit(),
        "model": model,
        "workload": workload,
        "command": " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], "-m", _module(), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
    }


def _module() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


def write_results(path: str, device: str, model: str, workload: dict[str, Any], rows: list[dict[str, Any]] | dict[str, Any]) -> None:
    """``{"meta": …, "results": rows}`` to ``path`` (folders made), and say where."""
    out = {"meta": run_meta(device, model, workload), "results": rows}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
