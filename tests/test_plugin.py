"""The plugin: gated entry point, idempotent install, and the scheduler entry function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from a2ats_sglang.runtime import plugin

ROOT = Path(__file__).resolve().parents[1]

# Run SGLang's own plugin loader in a fresh process, as a scheduler would.
PROBE = """
import json, pickle, sys
import a2ats_sglang.runtime.plugin as plugin
light = not any(m == "sglang" or m.startswith("sglang.") for m in sys.modules)
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, DETERMINISTIC_ATTENTION_BACKEND_CHOICES, RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND
out = {"light": light, "registered": "a2ats" in ATTENTION_BACKENDS, "choice": "a2ats" in ATTENTION_BACKEND_CHOICES}
if out["registered"]:
    plugin.install(); plugin.register()
    out["choices"] = ATTENTION_BACKEND_CHOICES.count("a2ats")
    out["deterministic"] = DETERMINISTIC_ATTENTION_BACKEND_CHOICES.count("a2ats")
    out["radix_deterministic"] = RADIX_SUPPORTED_DETERMINISTIC_ATTENTION_BACKEND.count("a2ats")
    out["factory"] = ATTENTION_BACKENDS["a2ats"] is plugin.create_a2ats_backend
    out["by_reference"] = b"a2ats_sglang.runtime.plugin" in pickle.dumps(plugin.run_scheduler_process)
print("PROBE", json.dumps(out))
"""


@pytest.fixture(scope="module")
def probes() -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("A2ATS_SGLANG_ENABLE", "SGLANG_PLUGINS")}
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-c", PROBE], cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**env, **extra},
        )
        for name, extra in {"off": {}, "on": {"A2ATS_SGLANG_ENABLE": "1"}}.items()
    }
    out = {}
    for name, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        out[name] = json.loads(stdout.split("PROBE ", 1)[1])
    return out


def test_entry_point_is_discoverable() -> None:
    eps = [ep for ep in entry_points(group=plugin.ENTRY_POINT_GROUP) if ep.name == plugin.ENTRY_POINT_NAME]
    assert [ep.value for ep in eps] == ["a2ats_sglang.runtime.plugin:register"], "run: pip install -e ."
    assert eps[0].load() is plugin.register
    assert plugin.entry_point_installed()


def test_plugin_module_is_import_light(probes: dict[str, dict]) -> None:
    assert probes["off"]["light"]


def test_register_does_nothing_without_the_gate(probes: dict[str, dict]) -> None:
    assert probes["off"] == {"light": True, "registered": False, "choice": False}


def test_register_installs_with_the_gate(probes: dict[str, dict]) -> None:
    on = probes["on"]
    assert on["registered"] and on["choice"] and on["factory"]
    assert on["choices"] == 1 and on["deterministic"] == 1 and on["radix_deterministic"] == 1  # install() and register() again change nothing
    assert on["by_reference"]  # spawn pickles the scheduler entry by name, importing this module
