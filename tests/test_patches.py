"""Every patch module follows the convention of ``patches/__init__.py``, and the SGLang
function it hooks still has the signature the patch was written against."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from a2ats_sglang import patches

ROOT = Path(__file__).resolve().parents[1]
MODULES = patches.module_names()

# A fresh process: nothing is installed there, so we see SGLang's own functions, not our hooks.
PROBE = """
import json, sys
from a2ats_sglang import patches
out = {}
for name in patches.module_names():
    target = patches.load(name).TARGET
    try:
        out[name] = patches.signature_of(target)
    except Exception as e:
        out[name] = f"cannot resolve: {type(e).__name__}: {e}"
print("PROBE", json.dumps(out))
"""


@pytest.fixture(scope="module")
def found() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("PROBE ", 1)[1])


def test_modules_are_discovered() -> None:
    on_disk = sorted(p.stem for p in (ROOT / "patches").glob("*.py") if not p.stem.startswith("_"))
    assert list(MODULES) == on_disk


@pytest.mark.parametrize("name", MODULES)
def test_module_follows_the_convention(name: str) -> None:
    mod = patches.load(name)
    assert isinstance(mod.TARGET, str) and mod.TARGET.startswith("sglang."), f"patches/{name}.py: TARGET"
    assert isinstance(mod.SIGNATURE, str) and mod.SIGNATURE.startswith("("), f"patches/{name}.py: SIGNATURE"
    assert callable(mod.install) and not inspect.signature(mod.install).parameters, f"patches/{name}.py: install()"
    assert mod.__doc__ and mod.TARGET in mod.__doc__, f"patches/{name}.py: the docstring must name {mod.TARGET}"


@pytest.mark.parametrize("name", MODULES)
def test_target_signature_unchanged(name: str, found: dict[str, str]) -> None:
    mod = patches.load(name)
    assert found[name] == mod.SIGNATURE, (
        f"SGLang changed {mod.TARGET}: expected {mod.SIGNATURE}, found {found[name]} — review patches/{name}.py"
    )


def test_resolve_walks_modules_then_attributes() -> None:
    assert patches.resolve("json.decoder.JSONDecoder.decode") is json.decoder.JSONDecoder.decode
    assert patches.signature_of("json.dumps").startswith("(obj, *, skipkeys=False")
    with pytest.raises(AttributeError):
        patches.resolve("json.decoder.NoSuchThing")
